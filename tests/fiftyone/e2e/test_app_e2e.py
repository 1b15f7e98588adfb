"""End to end: the real FiftyOne App in headless Debian Chromium, driven with Python Playwright,
on a real FiftyOne database, with the tiny synthetic CLIP (``tiny:seed0``) and a few samples.
One App server and one Chromium serve every test of the module. The user's journeys, each
asserting what the App shows against what is stored:

1. pre-label from the operator browser, see the field; evaluate from the panel's *Evaluate…*
   form, read mIoU and per-class IoU in the output and the panel; *Open worst samples* (the
   App's view); *Export COCO…* from the panel on that view, read back with pycocotools and
   FiftyOne pixel for pixel; compare two runs in the panel;
2. schedule a pre-label from the form (*Schedule*), run by a ``fiftyone delegated launch``
   worker the test starts: the field, masks in the database, the run's settings hash;
3. a pre-label over bad files (corrupt, truncated, 16-bit, EXIF-rotated): each failure's whole
   message readable in the output;

and "Compare OVSS methods" with two methods picked in its multi-select. Screenshots go to
``test-artifacts/e2e/`` (gitignored); the README's walkthrough images are copies of them.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(never ``playwright install``); skipped otherwise.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support.app import (ARTIFACTS, Shots, app_server as run_app_server, chromium, dataset_page,
                         dismiss_popups, show_in_app, sync_playwright_or_skip, wait_until)
from support.coco import decode_coco
from support.exif import sensor_image, write_oriented
from support.images import write_bad_images
from support.fo import (REPO_ROOT, URI_PRELABEL, VOC_CLASSES, coco_semantic,  # noqa: E402
                        make_dataset, needs_core, unique_name, voc_items)
from support.processes import stop_process

pytestmark = [pytest.mark.e2e, needs_core]


@pytest.fixture(scope="module")
def playwright_sync():
    return sync_playwright_or_skip()


@pytest.fixture(scope="module")
def app_dataset(fo, data_dir):
    items = voc_items(data_dir)
    coco_items, _ = coco_semantic(data_dir, limit=2)
    names = dict(enumerate(VOC_CLASSES))
    ds = make_dataset(fo, items, names, "e2e")
    # two COCO images with the VOC vocabulary's ground truth left empty: still pre-labellable
    ds.add_samples([fo.Sample(filepath=str(p)) for p, _ in coco_items])
    yield show_in_app(fo, ds)
    ds.delete()


@pytest.fixture(scope="module")
def app_server(app_dataset):
    with run_app_server(ARTIFACTS / "server.log") as url:
        yield url


def _input_after(page, label_text):
    """The first input/textarea after a form label (inputs have no name or label attribute)."""
    return page.get_by_text(label_text, exact=True).first.locator(
        "xpath=following::*[self::input or self::textarea][1]")


@pytest.fixture(scope="module")
def browser(playwright_sync):
    """One headless Chromium for every test of this module (each test opens its own page)."""
    with chromium(playwright_sync) as b:
        yield b


@contextlib.contextmanager
def _dataset_page(browser, app_server, ds, shots, failure_png, ready_text="ground_truth"):
    """A page showing ``ds`` in the App, from the whole dataset (see :func:`_clear_view`)."""
    with dataset_page(browser, app_server, ds, shots, failure_png, ready_text, settle=3) as page:
        _clear_view(page)
        yield page


def _clear_view(page):
    """Back to the whole dataset: the App server keeps a view set by an earlier page."""
    clear = page.locator("[data-cy='btn-clear-view-bar']").first
    if clear.is_visible():
        clear.click()
        time.sleep(1)


def _open_operator(page, search, label):
    """Opens an operator's form from the operator browser (Backquote)."""
    page.keyboard.press("Backquote")
    page.get_by_placeholder("Search operations by name...").fill(search)
    page.get_by_text(label, exact=True).first.click()
    page.get_by_text("Pretrained weights", exact=True).first.wait_for()
    time.sleep(2)


def _fill_tiny_backbone_and_windows(page):
    """The tiny synthetic CLIP and a small sliding-window protocol (fast on a CPU)."""
    page.locator("input[value='openai']").first.fill("tiny:seed0")
    _input_after(page, "Short side").fill("96")
    _input_after(page, "Window size").fill("64")
    _input_after(page, "Window stride").fill("64")


def _close_output(page):
    page.keyboard.press("Escape")
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def _open_evaluations_panel(page, *eval_keys, settle=3.0):
    """Reloads the App, opens the "OVSS evaluations" panel and waits for ``eval_keys`` (then
    ``settle`` seconds, for its plots to draw)."""
    page.reload(wait_until="load")
    page.get_by_text("ground_truth", exact=True).first.wait_for()
    time.sleep(2)
    dismiss_popups(page)
    page.locator("[data-cy='new-panel-btn'], [title='New panel']").first.click()
    page.get_by_text("OVSS evaluations", exact=True).first.click()
    for key in eval_keys:
        page.get_by_text(key, exact=True).first.wait_for()
    time.sleep(settle)


def _choose_compared_run(page, key):
    """Picks ``key`` in the panel's "Compare with" dropdown (showing "(none)"). The panel's data
    arrive after its first render: on a loaded machine the dropdown can take a while, so it
    refreshes the panel once before giving up, and fails with what the panel showed."""
    none = page.get_by_text("(none)", exact=True).first
    for attempt in range(2):
        try:
            none.wait_for(timeout=45000)
            break
        except Exception:
            if attempt:
                text = page.locator("body").inner_text()[-3000:]
                raise AssertionError(f"the panel shows no 'Compare with' dropdown; it shows:\n{text}")
            page.get_by_role("button", name="Refresh").first.click()
    none.click()
    page.get_by_role("option", name=key).first.click()


def _open_panel_form(page, button, label):
    """Clicks the panel's ``button`` and waits for its operator form (``label`` in it)."""
    page.get_by_role("button", name=button).first.click()
    page.get_by_text(label, exact=True).first.wait_for()
    time.sleep(2)


def _output_text(page):
    """The text of the operator's output dialog (the App shows it in a modal)."""
    dialog = page.get_by_role("dialog")
    return (dialog.last if dialog.count() else page.locator("body")).inner_text()


def _shown_text(text, label):
    """The value the output shows after ``label:`` (on the next line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[lines.index(label + ":") + 1]


def _fill_and_keep(page, label, value, settle=3):
    """Fills the input after ``label`` until it keeps ``value`` for ``settle`` polls in a row: the
    form re-resolves after a change of another input (here the field, whose default path follows)
    and a late re-render can reset what was typed before it."""
    box = _input_after(page, label)
    kept = 0

    def stable():
        nonlocal kept
        if box.input_value() == value:
            kept += 1
        else:
            kept = 0
            box.fill(value)
        return kept >= settle

    wait_until(stable, timeout=30, interval=0.5, what=f"{label!r} to keep {value!r}")


def _assert_coco_export_pixel_exact(fo, labels_path, view, field, targets):
    """The export holds exactly ``view``'s images, and pycocotools and FiftyOne's COCO importer
    both decode it to ``field``'s masks pixel for pixel (background 0 is not exported)."""
    def expected(mask):
        m = mask.astype(np.int64)
        return np.where(np.isin(m, [v for v in targets if v != 0]), m, 0)

    sources = {Path(s.filepath).name: s[field].get_mask() for s in view}
    decoded = decode_coco(labels_path)[1]
    assert sorted(decoded) == sorted(sources)
    for name, src in sources.items():
        np.testing.assert_array_equal(decoded[name], expected(src), err_msg=name)
    roots = {str(Path(s.filepath).parent) for s in view}
    assert len(roots) == 1
    re_ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                                data_path=roots.pop(), labels_path=str(labels_path),
                                label_types="segmentations", label_field="seg",
                                name=unique_name("reimport"))
    try:
        assert sorted(Path(p).name for p in re_ds.values("filepath")) == sorted(sources)
        by_name = {n: int(v) for v, n in targets.items()}
        seg = "seg_segmentations" if re_ds.has_field("seg_segmentations") else "seg"
        for sample in re_ds:
            src = sources[Path(sample.filepath).name]
            rebuilt = np.zeros(src.shape, np.int64)
            H, W = src.shape
            for det in (sample[seg].detections if sample[seg] else []):
                x, y = det.bounding_box[:2]
                x0, y0 = int(round(x * W)), int(round(y * H))
                m = det.mask.astype(bool)
                rebuilt[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = by_name[det.label]
            np.testing.assert_array_equal(rebuilt, expected(src), err_msg=sample.filepath)
    finally:
        re_ds.delete()


def test_app_prelabel_field_and_panel(fo, browser, app_server, app_dataset, tmp_path):
    ds = app_dataset
    shot = Shots()
    with _dataset_page(browser, app_server, ds, shot, "99-failure.png") as page:
        shot(page, "01-dataset.png")

        # -- pre-label from the operator browser ------------------------------------------
        _open_operator(page, "Pre-label", "Pre-label with open-vocabulary segmentation")
        shot(page, "02-prelabel-form-top.png")
        _fill_tiny_backbone_and_windows(page)
        field = page.locator("input[value='ovss_sclip']").first
        field.fill("ovss_app")
        time.sleep(2)
        shot(page, "02-prelabel-form-bottom.png")
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("Samples labelled", exact=False).first.wait_for(timeout=240000)
        time.sleep(1)
        shot(page, "03-prelabel-done.png")
        ds.reload()
        assert len(ds.exists("ovss_app")) == len(ds)
        _close_output(page)

        # -- the new field is in the sidebar; show it --------------------------------------
        name_el = page.get_by_text("ovss_app", exact=True).first
        name_el.wait_for()
        box = name_el.bounding_box()
        page.mouse.click(box["x"] - 16, box["y"] + box["height"] / 2)
        time.sleep(4)
        shot(page, "04-new-field.png")

        # a second run to compare with: the ground truth shifted by 12 px (a stand-in for
        # a better method; the tiny synthetic CLIP's masks score ~0)
        rough = {}
        for s in ds.exists("ground_truth"):
            m = np.roll(s.ground_truth.get_mask(), 12, axis=1)
            rough[s.id] = fo.Segmentation(mask=np.where(m == 255, 0, m).astype(np.uint8))
        ds.set_values("gt_shifted", rough, key_field="id")
        mt = dict(ds.mask_targets)
        mt["gt_shifted"] = mt["ground_truth"]
        ds.mask_targets = mt
        ds.save()

        # -- evaluate both from the panel's "Evaluate…" button, the form clicked through ----
        # (the evaluation reloads the dataset, which closes the panel: opened again each time)
        _open_evaluations_panel(page, settle=0.5)
        page.get_by_text("No segmentation evaluation on this dataset yet", exact=False) \
            .first.wait_for()
        results = {}
        for pred, key, png in (("ovss_app", "eval_app", "20-evaluate-form.png"),
                               ("gt_shifted", "eval_shifted", None)):
            if results:
                _open_evaluations_panel(page, *results, settle=0.5)
            _open_panel_form(page, "Evaluate…", "Evaluation key")
            _pick(page, "Predictions", pred)
            _pick(page, "Ground truth", "ground_truth")
            page.locator(f"input[value='eval_{pred}']").first.fill(key)
            page.get_by_text("21 classes from mask_targets", exact=False).first.wait_for()
            time.sleep(1)
            if png:
                shot(page, png)
            page.get_by_role("button", name="Execute").click()
            page.get_by_text("Evaluation finished", exact=True).first.wait_for(timeout=120000)
            time.sleep(1)
            output = _output_text(page)
            ds.reload()
            res = results[key] = ds.load_evaluation_results(key)
            summary = res.metrics_summary
            assert _shown_text(output, "Evaluation key") == key
            for label, value in (("mIoU (%)", summary["mIoU"]),
                                 ("Pixel accuracy aAcc (%)", summary["aAcc"]),
                                 ("Mean class accuracy mAcc (%)", summary["mAcc"])):
                assert float(_shown_text(output, label)) == round(100 * value, 2), \
                    (key, label, output)
            if png:
                shot(page, "21-evaluate-done.png")
            _close_output(page)
        res = results["eval_shifted"]
        assert res.mIoU > 0.1  # the shifted ground truth overlaps: the numbers say something

        # -- the panel shows the runs: mIoU and per-class IoU equal the stored evaluations' -
        _open_evaluations_panel(page, *results)
        runs_table = page.locator("table", has=page.get_by_text("eval_shifted", exact=True)).first
        runs_table.wait_for()
        page.get_by_text("eval_app", exact=True).first.wait_for()
        time.sleep(2)
        runs = _table_rows(runs_table, "Eval key")
        for key, r in results.items():
            assert float(runs[key]["mIoU %"]) == round(100 * r.mIoU, 2), key
            assert float(runs[key]["aAcc %"]) == round(100 * r.aAcc, 2), key
        assert runs["eval_app"]["Method"] == "sclip"
        # the run shown is the latest one: eval_shifted
        per_class = _table_rows(page.locator("table", has=page.get_by_text(
            "IoU % (run)", exact=True)).first, "Class")
        stored = {c["name"]: round(100 * c["iou"], 2) for c in res.per_class()
                  if c["iou"] is not None and not np.isnan(c["iou"])}
        assert len(stored) > 2 and any(stored.values())
        assert {k: float(v["IoU % (run)"]) for k, v in per_class.items()} == stored
        page.get_by_text("Per class", exact=True).first.scroll_into_view_if_needed()
        time.sleep(1)
        shot(page, "22-panel-per-class.png")
        page.get_by_text("Runs", exact=True).first.scroll_into_view_if_needed()

        # -- "Open worst samples": the App's view is the run's worst samples ----------------
        worst = ds.exists("eval_shifted_miou").sort_by("eval_shifted_miou")
        assert 0 < len(worst) < len(ds)  # the samples without ground truth have no mIoU
        page.get_by_text(f"{len(ds)} samples", exact=True).first.wait_for()
        page.get_by_role("button", name="Open worst samples").first.click()
        page.get_by_text(f"{len(worst)} samples", exact=True).first.wait_for()
        time.sleep(2)
        shot(page, "23-worst-samples.png")

        # -- "Export COCO…" from the panel on that view, read back pixel-exact --------------
        out = tmp_path / "worst_coco.json"
        _open_panel_form(page, "Export COCO…", "COCO JSON path")
        _pick(page, "Field", "ovss_app")
        _fill_and_keep(page, "COCO JSON path", str(out))
        time.sleep(1)
        shot(page, "24-export-form.png")
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("COCO export finished", exact=True).first.wait_for(timeout=120000)
        time.sleep(1)
        shot(page, "25-export-done.png")
        output = _output_text(page)
        assert int(_shown_text(output, "Images")) == len(worst), output
        _close_output(page)
        _assert_coco_export_pixel_exact(fo, out, worst, "ovss_app", ds.mask_targets["ovss_app"])
        _clear_view(page)
        page.get_by_text(f"{len(ds)} samples", exact=True).first.wait_for()

        _open_evaluations_panel(page, "eval_app", "eval_shifted")
        shot(page, "05-panel.png")
        # compare the two runs: per-class IoU bars side by side, deltas
        _choose_compared_run(page, "eval_app")
        page.get_by_text("IoU % (compared)", exact=True).first.wait_for()
        time.sleep(3)
        shot(page, "06-panel-compare.png")
    shot.check()


MULTI_PLACEHOLDER = "Type and press enter to add a value"  # the App's multi-select input


def _table_rows(table, key):
    """``{row[key]: row}`` of an App table, each row ``{column header: cell text}``."""
    header = table.locator("thead th").all_inner_texts()
    rows = (dict(zip(header, tr.locator("td").all_inner_texts()))
            for tr in table.locator("tbody tr").all())
    return {row[key]: row for row in rows}


def _pick(page, label, option):
    """Picks ``option`` in the single-choice dropdown after the form label ``label``."""
    select = page.get_by_text(label, exact=True).first.locator(
        "xpath=following::*[contains(@class, 'MuiSelect-select')][1]")
    select.click()
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_until(lambda: select.inner_text() == option, what=f"{label}: {option}")


def test_app_compare_methods(fo, browser, app_server, app_dataset):
    """"Compare OVSS methods" in the App: two methods picked in the multi-select, pre-labelled
    on the shared trunk and evaluated; the mIoU it shows are the stored evaluations'."""
    ds = app_dataset
    picked = ["sclip", "clearclip"]
    fields = {m: f"cmp_{m}" for m in picked}
    shot = Shots()
    with _dataset_page(browser, app_server, ds, shot, "99-failure-compare.png") as page:
        _open_operator(page, "Compare", "Compare OVSS methods")
        methods = page.locator(".MuiAutocomplete-root",
                               has=page.get_by_placeholder(MULTI_PLACEHOLDER))
        chips = methods.locator(".MuiAutocomplete-tag")
        execute = page.get_by_role("button", name="Execute")

        def chosen():
            return chips.all_inner_texts()

        assert chosen() == ["sclip", "clearclip", "naclip"]  # the default

        # -- the multi-select: clear it (the form refuses to run), pick two ------------------
        methods.hover()
        methods.locator("[title='Clear']").click()
        page.get_by_text("Methods", exact=True).first.click()  # blur
        page.get_by_text("Pick at least one method", exact=True).first.wait_for()
        wait_until(lambda: not chosen(), what="no chips")
        wait_until(execute.is_disabled, what="Execute disabled")
        box = methods.get_by_placeholder(MULTI_PLACEHOLDER)
        box.click()
        page.get_by_role("option", name="sclip", exact=True).click()  # from the list
        box.fill("clearc")  # typed, filtered, Enter picks the highlighted one
        page.keyboard.press("Enter")
        wait_until(lambda: chosen() == picked, what=f"chips {picked}")
        page.get_by_text("Pick at least one method", exact=True).wait_for(state="detached")
        wait_until(execute.is_enabled, what="Execute enabled")
        box.click()  # the list offers only the methods not picked yet
        page.get_by_role("option", name="naclip", exact=True).wait_for()
        options = page.get_by_role("option").all_inner_texts()
        assert not set(picked) & set(options) and "naclip" in options
        shot(page, "11-compare-form-top.png")
        page.keyboard.press("Escape")  # closes the list only
        page.get_by_role("option").first.wait_for(state="detached")
        assert chosen() == picked

        # -- backbone, window settings, output prefix, ground truth --------------------------
        _fill_tiny_backbone_and_windows(page)
        page.locator("input[value='ovss_']").first.fill("cmp_")
        page.get_by_text("Fields: " + ", ".join(fields.values()), exact=True).first.wait_for()
        _pick(page, "Ground truth (optional)", "ground_truth")
        page.get_by_text("Ignore index", exact=True).first.scroll_into_view_if_needed()
        time.sleep(2)
        shot(page, "12-compare-form-bottom.png")

        # -- execute: the output table shows each method's mIoU -----------------------------
        execute.click()
        page.get_by_text("Comparison finished", exact=True).first.wait_for(timeout=300000)
        time.sleep(2)
        shot(page, "13-compare-done.png")
        shown = _table_rows(page.locator("table").first, "Method")
        assert sorted(shown) == sorted(picked)
        assert page.get_by_text("not evaluated", exact=False).count() == 0

        ds.reload()
        evals = set(ds.list_evaluations())
        for m, f in fields.items():
            assert len(ds.exists(f)) == len(ds), f
            key = f"eval_{f}"
            assert key in evals
            res = ds.load_evaluation_results(key)
            row = shown[m]
            assert (row["Field"], row["Eval key"]) == (f, key)
            assert row["Labelled"] == str(len(ds)) and row["Failed"] == "0"
            for col, value in (("mIoU %", res.mIoU), ("aAcc %", res.aAcc),
                               ("mAcc %", res.mAcc)):
                assert float(row[col]) == round(100 * value, 2), (m, col, row[col], value)
        _close_output(page)

        # -- the panel lists both runs with the same mIoU; compare them ---------------------
        keys = [f"eval_{f}" for f in fields.values()]
        _open_evaluations_panel(page, *keys)
        runs = _table_rows(page.locator("table", has=page.get_by_text(keys[0], exact=True))
                           .first, "Eval key")
        for m, key in zip(picked, keys):
            assert runs[key]["Method"] == m
            assert runs[key]["mIoU %"] == shown[m]["mIoU %"]
        _pick(page, "Run", keys[0])
        _pick(page, "Compare with", keys[1])
        page.get_by_text("IoU % (compared)", exact=True).first.wait_for()
        page.get_by_text("Runs", exact=True).first.scroll_into_view_if_needed()
        time.sleep(3)
        shot(page, "14-compare-panel.png")
    shot.check()



# -- journey 2: a pre-label scheduled from the form, run by a worker the test starts -------------

@pytest.fixture()
def delegated_worker(app_server):
    """``fiftyone delegated launch`` in a subprocess on the same database (this process's
    FIFTYONE_* environment) and this checkout's code; stopped by its PID."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    log = open(ARTIFACTS / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from fiftyone.core.cli import main; sys.exit(main())",
         "delegated", "launch"], env=env, cwd=str(REPO_ROOT), stdout=log,
        stderr=subprocess.STDOUT)
    yield proc
    stop_process(proc, grace=15)
    log.close()


def _delegated_prelabels(dataset_name):
    import fiftyone.operators.delegated as food

    return [op for op in food.DelegatedOperationService().list_operations(
        dataset_name=dataset_name) if op.operator == URI_PRELABEL]


def test_app_schedule_prelabel_delegated(fo, browser, app_server, app_dataset, delegated_worker):
    """The pre-label form's *Schedule* (the split button's other choice) queues a delegated
    run; the worker started here runs it; the field, its masks in the database and the run's
    settings (hash, window protocol) appear, and the App shows the field after a reload."""
    from tfovss_fiftyone.prelabel import prelabel_run_info

    ds = app_dataset
    field = "ovss_scheduled"
    assert not _delegated_prelabels(ds.name)
    shot = Shots()
    with _dataset_page(browser, app_server, ds, shot, "99-failure-schedule.png") as page:
        page.get_by_text(f"{len(ds)} samples", exact=True).first.wait_for()  # no view
        _open_operator(page, "Pre-label", "Pre-label with open-vocabulary segmentation")
        _fill_tiny_backbone_and_windows(page)
        page.locator("input[value='ovss_sclip']").first.fill(field)
        page.get_by_text("In the database (mask): no files, larger DB", exact=True).first.click()
        time.sleep(1)
        page.locator("[aria-label='split button'] button[aria-haspopup='menu']").first.click()
        page.get_by_role("menuitem").filter(has_text="Schedule").first.click()
        schedule = page.get_by_role("button", name="Schedule", exact=True)
        schedule.wait_for()
        time.sleep(1)
        shot(page, "30-schedule-form.png")
        schedule.click()

        def finished():
            ops = _delegated_prelabels(ds.name)
            return ops and ops[0].run_state in ("completed", "failed")
        wait_until(finished, timeout=300, what="the worker to run the scheduled pre-label")
        (op,) = _delegated_prelabels(ds.name)
        assert op.run_state == "completed", (op.run_state, getattr(op.result, "error", None))
        assert op.context.request_params["params"]["label_field"] == field

        ds.reload()
        labelled = ds.exists(field)
        assert len(labelled) == len(ds)
        first = labelled.first()[field]
        assert first.mask is not None and first.mask_path is None  # kept in the database
        run = prelabel_run_info(ds, field)
        result = op.result.result
        assert run["settings_hash"] == result["settings_hash"] and len(run["settings_hash"]) >= 8
        assert (result["num_labelled"], result["num_failed"]) == (len(ds), 0)
        assert run["report"]["num_labelled"] == len(ds)
        assert run["pretrained"] == "tiny:seed0" and run["method"] == "sclip"
        assert {k: run["settings"][k] for k in ("short_side", "crop", "stride")} == \
            {"short_side": 96, "crop": 64, "stride": 64}, run["settings"]

        # the App shows the new field once reloaded
        page.reload(wait_until="load")
        page.get_by_text(field, exact=True).first.wait_for()
        time.sleep(2)
        dismiss_popups(page)
        shot(page, "31-scheduled-field.png")
    shot.check()


# -- journey 3: bad files, each failure readable in full in the operator's output ------------------

@pytest.fixture(scope="module")
def bad_files_dataset(fo, data_dir, tmp_path_factory):
    """One good VOC photo (with ground truth), a corrupt file, a truncated JPEG, a 16-bit PNG
    and an EXIF-rotated JPEG (stored landscape, shown portrait)."""
    root = tmp_path_factory.mktemp("bad_files")
    good_img, good_gt = voc_items(data_dir)[0]
    good = root / "good.jpg"
    good.write_bytes(Path(good_img).read_bytes())
    corrupt, truncated, deep = write_bad_images(root, good)
    rotated = root / "exif_rotated.jpg"
    shown = write_oriented(rotated, sensor_image(96, 160), 6)
    ds = fo.Dataset(unique_name("e2e-bad"))
    ds.add_samples([fo.Sample(filepath=str(good),
                              ground_truth=fo.Segmentation(mask=good_gt.astype(np.uint8)))] +
                   [fo.Sample(filepath=str(p)) for p in (corrupt, truncated, deep, rotated)])
    ds.mask_targets = {"ground_truth": dict(enumerate(VOC_CLASSES))}
    show_in_app(fo, ds)
    yield ds, {"bad": sorted(str(p) for p in (corrupt, truncated, deep)),
               "rotated": str(rotated), "rotated_shape": shown.shape[:2],
               "mask_dir": str(root / "masks")}
    ds.delete()


def test_app_prelabel_bad_files_listed_in_full(fo, browser, app_server, bad_files_dataset):
    """A pre-label run over bad files: the good and the EXIF-rotated photos are labelled (the
    rotated one upright), and each bad file's whole error message, as stored with the run, is
    in the App's output on one unclipped line."""
    from tfovss_fiftyone.prelabel import prelabel_run_info

    ds, files = bad_files_dataset
    field = "ovss_bad"
    shot = Shots()
    with _dataset_page(browser, app_server, ds, shot, "99-failure-bad-files.png") as page:
        _open_operator(page, "Pre-label", "Pre-label with open-vocabulary segmentation")
        _fill_tiny_backbone_and_windows(page)
        page.locator("input[value='ovss_sclip']").first.fill(field)
        _fill_and_keep(page, "Mask folder", files["mask_dir"])
        time.sleep(1)
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("Samples labelled", exact=False).first.wait_for(timeout=240000)
        page.get_by_text("Failures", exact=False).first.wait_for()
        time.sleep(1)
        output = _output_text(page)
        shot(page, "40-bad-files-output.png")

        ds.reload()
        report = prelabel_run_info(ds, field)["report"]
        failures = report["failures"]
        assert sorted(f["filepath"] for f in failures) == files["bad"]
        assert int(_shown_text(output, "Samples labelled")) == len(ds) - 3 == \
            report["num_labelled"]
        assert int(_shown_text(output, "Failed")) == 3
        assert any("16-bit" in f["error"] for f in failures)
        items = page.get_by_role("dialog").last.locator("li")
        shown = {}
        for i in range(items.count()):
            li = items.nth(i)
            li.scroll_into_view_if_needed()
            scroll_w, client_w = li.evaluate("e => [e.scrollWidth, e.clientWidth]")
            assert scroll_w <= client_w + 1, li.inner_text()  # wrapped, never clipped
            shown[li.inner_text().split(" ", 1)[0]] = li.inner_text()
        for f in failures:
            name = Path(f["filepath"]).name
            assert shown[name] == f"{name} ({f['filepath']}): {f['error']}", shown
        _close_output(page)

    rotated = ds.match({"filepath": files["rotated"]}).first()[field]
    assert rotated.get_mask().shape == files["rotated_shape"]  # upright, as displayed
    assert rotated.mask_path.startswith(files["mask_dir"])
    shot.check()
