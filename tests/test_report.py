"""The report: tables match independent recomputation, steps are cached and resumable, the folder is locked."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nonrobust import models
from nonrobust.errors import UserError
from nonrobust.io import load_tensors
from nonrobust.report import SECTIONS, ReportSettings, profile, run_report

from helpers import comparable, kill_on, progress_rows  # noqa: E402

TINY = dict(model="cifar10-small-at", data="cifar10-slice", n=24, batch_size=12, attacks=("fgsm", "pgd-20", "cw-l2", "nrf-linf", "nrf"),
            l2_steps=4, ib_iterations=12, population_n=24, population_iterations=6, betas=(0.0, 1.0), beta_n=12, tsne_n=24,
            featvis_images=1, featvis_steps=4, device="cpu")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    settings = ReportSettings(**TINY)
    return settings, out, run_report(settings, out, progress=False)


def test_report_files(tiny_report):
    settings, out, results = tiny_report
    for name in ("report.html", "results.json", "table1.csv", "table2.csv", "table3.csv", "table4.csv", "beta_sweep.csv"):
        assert (out / name).is_file(), name
    for fig in ("table1", "tsne", "beta", "sigma", "featvis"):
        png = (out / "figures" / f"{fig}.png").read_bytes()
        assert png.startswith(b"\x89PNG"), fig
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") == 5
    assert "This run was trimmed" not in page  # no trimming declared for these settings
    assert json.loads((out / "results.json").read_text())["headline"] == results["headline"]
    assert set(results["readings"]) >= {"table1", "table2", "table3", "table4", "beta", "sigma", "tsne", "featvis"}


def test_the_page_says_one_thing_per_word_with_uncertainty(tiny_report):
    """Issue 16's page items: a summary on top, words defined once, intervals, paired tests, folded settings, β as itself."""
    settings, out, results = tiny_report
    page = (out / "report.html").read_text(encoding="utf-8")
    body = page[page.index("<body>"):]
    assert body.index("<b>Summary</b><ul><li>") < body.index("<h2>")  # the summary comes first, as a list
    items = __import__("nonrobust.report.readings", fromlist=["summary"]).summary(results)
    assert 3 <= len(items) <= 7 and items[0].startswith("Table 1's pattern") and items[-1].startswith("Run: ")  # verdicts first
    assert "fooled" not in body.lower()  # two meanings, two words: "turned wrong", "misclassified under attack"
    assert body.count("<b>turned wrong</b>:") == 1 and body.count("<b>misclassified under attack</b>:") == 1
    assert "L2 median (all)" not in body and "L2 median (changed)" in body
    assert "\\u03b2" not in page and "\\u" not in (out / "results.json").read_text(encoding="utf-8")
    assert "<details><summary>every setting of this run" in body
    for row in results["table3"]["rows"]:
        n, k = results["table3"]["n"], round(row["robust_accuracy"] * results["table3"]["n"])
        lo, hi = row["robust_accuracy_ci95"]
        z = 1.959964  # the Wilson score interval, written out again
        centre, half = (k / n + z * z / (2 * n)) / (1 + z * z / n), z * ((k / n) * (1 - k / n) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
        assert (lo, hi) == pytest.approx((max(0, centre - half), min(1, centre + half)))
        assert lo <= row["robust_accuracy"] <= hi and f"[{100 * lo:.1f}–{100 * hi:.1f}]" in body
    pairs = results["table3"]["paired"]
    assert len(pairs) == len(results["table3"]["rows"]) * (len(results["table3"]["rows"]) - 1) // 2
    from nonrobust.streams import correct_under_attack

    a, b = pairs[0]["a"], pairs[0]["b"]
    key = {r["label"]: r["attack"] for r in results["table3"]["rows"]}
    ca, cb = (correct_under_attack(out / "adversarial" / f"{key[x]}.safetensors") for x in (a, b))
    assert pairs[0]["a_only"] == int((ca & ~cb).sum()) and pairs[0]["b_only"] == int((cb & ~ca).sum())
    t4 = [r["label"] for r in results["table4"]["rows"]]
    assert t4 == ["G_nr ↑ (NRF)", "G_nr ↓ (NRF2)", "G_r ↑ (RF)", "G_r ↓ (RF2)"]
    assert "example 1 (image" in " ".join(results["featvis"]["rows"])
    sep = results["tsne"]["separation"]
    assert set(sep) == {"clean/robust", "clean/nonrobust", "attack/robust", "attack/nonrobust"}
    assert "nearest-neighbour accuracy" in results["readings"]["tsne"] and " here." in results["readings"]["tsne"]
    ch = results["table1"]["paper"]["channels"]
    assert f"{ch['robust']:.2f} robust / {ch['nonrobust']:.2f} non-robust" in body  # one rounding, the images named


def test_table3_matches_independent_recount(tiny_report):
    settings, out, results = tiny_report
    from nonrobust.data import load_dataset

    ds = load_dataset("cifar10-slice", "test").first(24)
    model = models.pretrained("cifar10-small-at")
    x, y = ds.tensors()
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    assert results["table3"]["clean_accuracy"] == pytest.approx(clean_ok.float().mean().item())
    worst = clean_ok.clone()
    for row in results["table3"]["rows"]:
        t, _ = load_tensors(out / "adversarial" / f"{row['attack']}.safetensors", keys=("x_adv",))
        with torch.no_grad():
            adv_ok = model(t["x_adv"]).argmax(1) == y
        assert row["robust_accuracy"] == pytest.approx((clean_ok & adv_ok).float().mean().item()), row["label"]
        delta = (t["x_adv"] - x).flatten(1)
        assert row["linf_max"] == pytest.approx(delta.abs().max().item(), abs=1e-6)
        assert row["l2_median"] == pytest.approx(delta.norm(dim=1).median().item(), rel=1e-5)
        if row["norm"] == "linf":
            assert row["linf_max"] <= settings.eps
            worst &= adv_ok
    assert results["table3"]["worst_case_linf"] == pytest.approx(worst.float().mean().item())
    with open(out / "table3.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == [r["label"] for r in results["table3"]["rows"]]
    assert float(rows[1]["robust_accuracy"]) == pytest.approx(results["table3"]["rows"][1]["robust_accuracy"])


def test_table1_int_row_is_the_model(tiny_report):
    """Table 1's 'Int.' column is the model's own accuracy on each input: Z is not masked."""
    settings, out, results = tiny_report
    model = models.pretrained("cifar10-small-at")
    for protocol, table in results["table1"].items():
        assert table["rows"]["clean"]["int"] == pytest.approx(results["table3"]["clean_accuracy"])
        for row in results["table3"]["rows"]:
            t, _ = load_tensors(out / "adversarial" / f"{row['attack']}.safetensors", keys=("x_adv", "y"))
            with torch.no_grad():
                acc = (model(t["x_adv"]).argmax(1) == t["y"]).float().mean().item()
            assert table["rows"][row["label"]]["int"] == pytest.approx(acc), (protocol, row["label"])
    assert set(results["table1"]) == {"paper", "population"}


def test_rerun_reuses_every_step_and_gives_identical_results(tiny_report):
    settings, out, results = tiny_report
    again = run_report(settings, out, progress=False)
    assert all(v["reused"] for v in again["steps"].values())
    assert comparable(again) == comparable(results)


def test_changed_setting_recomputes_only_what_depends_on_it(tiny_report, tmp_path):
    settings, out, results = tiny_report
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_report(replace(settings, betas=(0.0, 3.0)), copy, progress=False)
    assert not again["steps"]["beta-sweep"]["reused"]
    assert all(again["steps"][k]["reused"] for k in again["steps"] if k != "beta-sweep")
    assert again["beta_sweep"]["rows"][1]["beta"] == 3.0


def test_steps_that_read_an_attack_rerun_when_its_settings_change(tiny_report, tmp_path):
    settings, out, results = tiny_report
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_report(replace(settings, eps=4 / 255), copy, only=("tsne", "featvis"), progress=False)
    assert not again["steps"]["attack-pgd-20"]["reused"]
    assert not again["steps"]["tsne"]["reused"] and not again["steps"]["featvis"]["reused"]


def test_bottleneck_settings_recompute_the_nrf_attacks(tiny_report, tmp_path):
    """0.1.1 keyed NRF's examples without the bottleneck's iterations: a rerun with other --ib-iterations reused them."""
    settings, out, results = tiny_report
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_report(replace(settings, ib_iterations=settings.ib_iterations + 1), copy, only=("table3",), progress=False)
    assert not again["steps"]["attack-nrf-linf"]["reused"] and not again["steps"]["attack-nrf"]["reused"]
    assert again["steps"]["attack-fgsm"]["reused"] and again["steps"]["attack-pgd-20"]["reused"]
    row = next(r for r in again["table3"]["rows"] if r["attack"] == "nrf-linf")
    assert row["settings"]["ib"]["iterations"] == settings.ib_iterations + 1


def test_table1_reading_compares_the_protocols_also_when_one_has_no_robust_channel():
    from nonrobust.report.readings import _reading_table1

    def protocol(robust_channels, r_adv):
        rows = {"clean": {"robust": 0.3, "nonrobust": 0.7, "int": 0.7}, "PGD-20": {"robust": r_adv, "nonrobust": 0.3, "int": 0.35}}
        return {"rows": rows, "channels": {"robust": robust_channels, "total": 256}, "n": 200}

    text = _reading_table1({"paper": protocol(1.6, 0.2), "population": protocol(0.0, 0.1)}, "PGD-20", 0.1)
    assert "fewer than one channel" in text
    assert "10.0 points less robust-feature accuracy" in text
    assert text.count("The paper's pattern") == 1  # one comparative reading, not one per protocol
    assert "20.0% [15.0–26.1] (paper), 10.0% [6.6–14.9] (population) under PGD-20" in text  # Wilson intervals over n = 200


def test_only_one_section(tmp_path):
    results = run_report(ReportSettings(**TINY), tmp_path, only=("sigma",), progress=False)
    assert "sigma" in results and "table1" not in results and "table3" not in results
    assert (tmp_path / "figures" / "sigma.png").is_file()
    with pytest.raises(UserError, match="unknown report section"):
        run_report(ReportSettings(**TINY), tmp_path, only=("table9",), progress=False)


def test_settings_are_checked():
    with pytest.raises(UserError, match="unknown report attack"):
        ReportSettings(**{**TINY, "attacks": ("pgd-20", "nope")})
    with pytest.raises(UserError, match="eps"):
        ReportSettings(**{**TINY, "eps": 0.0})
    demo = profile("demo")
    assert demo.trimmed and demo.model == "cifar10-small-at" and demo.data == "cifar10-slice"
    assert set(SECTIONS) == {"table1", "table2", "table3", "table4", "sanity", "tsne", "featvis", "beta", "sigma"}


def test_folder_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(UserError, match="being written by another nonrobust process"):
            run_report(ReportSettings(**TINY), tmp_path, only=("sigma",), progress=False)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    results = run_report(ReportSettings(**TINY), tmp_path, only=("sigma",), progress=False)
    assert "sigma" in results and not (tmp_path / ".lock").exists()


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nonrobust", *args], capture_output=True, text=True, **kw)


REPORT_ARGS = ["--model", "cifar10-small-at", "--data", "cifar10-slice", "--n", "24", "--batch-size", "12", "--attacks", "fgsm,pgd-20,nrf",
               "--l2-steps", "4", "--ib-iterations", "12", "--population-n", "24", "--population-iterations", "6", "--betas", "0", "1",
               "--beta-n", "12", "--tsne-n", "24", "--featvis-images", "1", "--featvis-steps", "4", "--device", "cpu"]


@pytest.mark.slow
def test_killed_report_resumes_to_the_same_result(tmp_path):
    """SIGKILL a report at two observed points; each rerun continues, and the end result equals an uninterrupted run's."""
    whole = _cli("report", *REPORT_ARGS, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    # SIGKILL inside the first attack (its first batch recorded), then between steps (the population split recorded)
    events = (lambda: progress_rows(killed / "adversarial" / "fgsm.safetensors") >= 12, lambda: (killed / "steps" / "population.json").is_file())
    for event in events:
        assert kill_on(["report", *REPORT_ARGS, "--out", killed], event), "the kill did not land mid-run"
        assert not (killed / "results.json").exists()
        for leftover in killed.rglob("*.tmp*"):
            pytest.fail(f"half-written file left: {leftover}")
    final = _cli("report", *REPORT_ARGS, "--out", str(killed))
    assert final.returncode == 0, final.stderr
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert comparable(a) == comparable(b)


def test_cli_evaluate_and_errors(tmp_path):
    r = _cli("evaluate", "table3", *REPORT_ARGS, "--out", str(tmp_path / "t3"))
    assert r.returncode == 0, r.stderr
    assert "PGD-20" in r.stdout and "report.html" in r.stdout
    r = _cli("evaluate", "sigma", *REPORT_ARGS, "--out", str(tmp_path / "sigma"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sigma" / "figures" / "sigma.png").is_file() and not (tmp_path / "sigma" / "adversarial").exists()
    r = _cli("evaluate", "table3", *REPORT_ARGS[:-2], "--attacks", "pgd-20,bogus", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown report attack") and "Traceback" not in r.stderr
    r = _cli("report", "--model", "cifar10-small-at", "--data", "cifar10-slice", "--layer", "nope", "--out", str(tmp_path / "l"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "nope" in r.stderr


def _chromium() -> tuple[str | None, str | None]:
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return browser, shutil.which("chromedriver")


def _browser_missing() -> str | None:
    """Why the browser test cannot run (naming exactly what is missing), or None."""
    browser, driver = _chromium()
    missing = [what for what, found in (("headless Chromium", browser), ("chromedriver", driver)) if not found]
    return f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver)" if missing else None


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_report_in_a_real_browser(tiny_report, tmp_path):
    """Headless Chromium loads report.html with no console errors, and its screenshot is not blank."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from io import BytesIO

    from PIL import Image, ImageStat
    from selenium.webdriver.chrome.service import Service

    settings, out, results = tiny_report
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,2400",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get((out / "report.html").resolve().as_uri())
        assert "nonrobust report" in driver.title
        images = driver.find_elements("tag name", "img")
        assert len(images) == 5
        assert driver.find_element("css selector", ".reading").text.startswith("Summary")  # the headline is the first thing read
        folded = driver.find_elements("tag name", "details")
        assert len(folded) >= 3 and not any(d.get_attribute("open") for d in folded)  # words, paired tests, settings: folded
        assert "β" in driver.find_element("tag name", "body").text
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shot = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("L")
        assert max(ImageStat.Stat(shot).stddev) > 10  # text, tables and figures, not a blank page
    finally:
        driver.quit()


def _grey_npz(path: Path, n_train: int = 64, n_test: int = 24) -> Path:
    """A 3-class data set of grey 20×28 images (class = brightness of one band), in the npz layout."""
    import numpy as np

    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 60, (n, 20, 28, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 6 * c:6 * c + 6] += 150
        return x, y

    (x, y), (xt, yt) = make(n_train), make(n_test)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def test_reproduce_chains_training_and_report_on_grey_non_square_images(tmp_path, monkeypatch):
    """The whole chain on data the shipped presets never saw: one channel, 20×28 pixels, 3 classes."""
    from nonrobust import reproduce as rp

    data = _grey_npz(tmp_path / "grey.npz")
    preset = rp.ReproducePreset("test-grey", "tiny", "tiny_cnn", f"npz:{data}", "fast")
    monkeypatch.setitem(rp.REPRODUCE_PRESETS, "test-grey", preset)
    report = dict(attacks=("fgsm", "pgd-20", "nrf"), l2_steps=3, ib_iterations=10, population_n=32, population_iterations=4,
                  betas=(0.0, 1.0), beta_n=12, tsne_n=24, featvis_images=1, featvis_steps=3, batch_size=12)
    out = rp.reproduce("test-grey", tmp_path / "run", device="cpu", epochs=2, report_overrides=report, progress=False)
    assert out["train"]["epochs"] == 2
    results = out["report"]
    assert results["data"]["input_shape"] == [1, 20, 28] and results["population"]["fitted_on"] == "train split"
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    assert (tmp_path / "run" / "report" / "figures" / "featvis.png").is_file()
    # a second call resumes: training is complete, every report step is reused
    again = rp.reproduce("test-grey", tmp_path / "run", device="cpu", epochs=2, report_overrides=report, progress=False)
    assert all(v["reused"] for v in again["report"]["steps"].values())


def test_sigterm_stops_a_report_cleanly(tmp_path):
    """SIGTERM (kill, timeout, a scheduler) is handled like Ctrl-C: exit 130, the folder lock released."""
    proc = subprocess.Popen([sys.executable, "-m", "nonrobust", "report", *REPORT_ARGS, "--out", str(tmp_path / "r")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not (tmp_path / "r" / ".lock").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "r" / ".lock").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "r" / ".lock").exists()


def test_table1_shows_its_rule_stability_and_label_control(tiny_report):
    settings, out, results = tiny_report
    paper = results["table1"]["paper"]
    assert paper["threshold"] == settings.threshold == "max"
    assert paper["stability"]["seeds"] == settings.stability == 3 and paper["stability"]["images"] == results["n"]
    assert set(paper["label_control"]) == {"robust_predicts_mask_label", "robust_predicts_true_label",
                                           "nonrobust_predicts_mask_label", "nonrobust_predicts_true_label"}
    assert "stability" not in results["table1"]["population"]  # one split for all images: nothing per image to compare
    page = (out / "report.html").read_text()
    assert "Stability over 3 noise seeds" in page and "random wrong label" in page and "threshold rule max" in page
    assert "Control (paper): with masks made from a random wrong label" in results["readings"]["table1"]


def test_table4_on_the_first_images_only(tiny_report, tmp_path):
    """``table4_n`` runs Table 4's attacks on the first N images, in their own files, and says so; Table 3 is untouched."""
    settings, out, results = tiny_report
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_report(replace(settings, table4_n=12), copy, only=("table4",), progress=False)
    t4 = again["table4"]
    assert t4["n"] == 12 and [r["attack"] for r in t4["rows"]] == ["nrf", "nrf2", "rf", "rf2"]
    assert not again["steps"]["attack-nrf-first12"]["reused"]
    x_adv = load_tensors(copy / "adversarial" / "nrf-first12.safetensors", keys=("x_adv",))[0]["x_adv"]
    assert x_adv.shape[0] == 12
    full = load_tensors(copy / "adversarial" / "nrf.safetensors", keys=("x_adv",))[0]["x_adv"]
    assert full.shape[0] == 24  # the whole-set file of Table 3's NRF is kept
    assert "on the first 12 of the 24 images" in (copy / "report.html").read_text()
    with pytest.raises(UserError, match="table4_n"):
        replace(settings, table4_n=0)


def _flat_folder(root: Path, side: int = 32, classes=("cat", "dog", "fox"), per_class: int = 4) -> Path:
    """Class sub-folders of PNG images directly under ``root`` (no train/ or test/)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(side)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_population_split_of_a_folder_without_splits_uses_the_images_not_evaluated(tmp_path):
    """A flat folder is only a test split: the population split is fitted on the images not evaluated, and the report says so."""
    folder = _flat_folder(tmp_path / "imgs")
    settings = ReportSettings(**{**TINY, "data": f"folder:{folder}", "n": 8, "batch_size": 4, "attacks": ("fgsm",), "table4": False,
                                 "population_n": 100, "featvis_images": 0, "tsne_n": 8, "beta_n": 4})
    with pytest.warns(UserWarning, match="classes"):
        results = run_report(settings, tmp_path / "r", only=("table1",), progress=False)
    assert results["population"]["fitted_on"] == "test split, images 8…11 (not evaluated)" and results["population"]["n"] == 4
    with pytest.warns(UserWarning, match="classes"):
        results = run_report(replace(settings, n=None), tmp_path / "r2", only=("table1",), progress=False)
    assert results["population"]["fitted_on"] == "the evaluated images themselves (the data set has no others)"
    assert any("fitted on the evaluated images" in note for note in results["notes"])


def test_channel_threshold_rule_in_the_sigma_and_population_sections(tmp_path):
    """The channel rule's T is per channel (not one number): both sections say so instead of failing."""
    results = run_report(ReportSettings(**{**TINY, "threshold": "channel"}), tmp_path, only=("sigma",), progress=False)
    assert results["sigma"]["threshold"] is None and "T is each image's own σ_z² per channel" in results["readings"]["sigma"]
    results = run_report(ReportSettings(**TINY), tmp_path / "p", only=("table1",), progress=False)
    assert results["population"]["threshold_rule"] == "channel" and results["population"]["threshold"] is None
    assert "T = each channel's own σ_z²" in (tmp_path / "p" / "report.html").read_text(encoding="utf-8")


def test_the_header_names_a_users_model_once_and_autoattack_sizes_are_explained():
    from nonrobust.report.render import _arch_note, _autoattack_note

    assert _arch_note("my_model.py:build", "my_model.py:build") == ""  # a Python-file model: its name is its architecture
    assert _arch_note("cifar10-small-at", "small_cnn") == " (small_cnn)"
    rows = [{"label": "PGD-20", "attack": "pgd-20"}, {"label": "APGD-CE", "attack": "apgd-ce"}]
    assert "APGD-CE returns the clean image" in _autoattack_note({"rows": rows})
    assert _autoattack_note({"rows": rows[:1]}) == ""


def test_results_json_keys_are_the_documented_ones(tiny_report):
    """ReportResults is the one place results.json's keys are described: every key written is documented there."""
    from nonrobust.report import ReportResults

    settings, out, results = tiny_report
    written = set(json.loads((out / "results.json").read_text()))
    assert written <= set(ReportResults.__annotations__), written - set(ReportResults.__annotations__)
    assert {"table1", "table2", "table3", "table4", "provenance", "readings"} <= written
