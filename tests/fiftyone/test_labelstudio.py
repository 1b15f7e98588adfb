"""The Label Studio round trip against a real Label Studio server (``.venv-labelstudio``, made by
scripts/setup_labelstudio.sh): brush RLE bit-exact, send -> load unedited is identical, an
annotator's edit changes exactly its pixels and the effort numbers match a hand count, re-sends
update, bad input changes nothing and never shows the token, the operators and the CLI run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.fo import REPO_ROOT, PLUGIN_NAME, needs_core, unique_name
from support.labelstudio import LS_VENV, api, free_port, needs_server, project_tasks

URI_SEND = f"{PLUGIN_NAME}/send_to_labelstudio"
URI_LOAD = f"{PLUGIN_NAME}/load_from_labelstudio"


# --- brush RLE (no server) -------------------------------------------------------------------

def _masks():
    rng = np.random.default_rng(7)
    yield np.zeros((1, 1), bool)
    yield np.ones((3, 5), bool)
    yield rng.random((17, 23)) > 0.5
    m = np.zeros((480, 640), bool)
    m[100:300, 50:400] = True
    m[::7, ::3] ^= True
    yield m
    yield np.ones((300, 301), bool)        # runs longer than one 16-bit chunk (65536 values)


def test_brush_rle_round_trips_bit_exact():
    from tfovss_fiftyone.labelstudio import decode_rle, mask_to_rle, rle_to_mask

    for m in _masks():
        rle = mask_to_rle(m)
        assert all(0 <= b <= 255 for b in rle)
        assert np.array_equal(rle_to_mask(rle, *m.shape), m)
        flat = decode_rle(rle)
        assert flat.size == m.size * 4 and set(np.unique(flat).tolist()) <= {0, 255}
    # a literal chunk (kind bit 0): 3 values 1, 2, 3 with 8-bit words and sizes 3,4,8,16
    bits = f"{3:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16)) + \
        "0" + "00" + "010" + "00000001" + "00000010" + "00000011"
    bits += "0" * (-len(bits) % 8)
    stream = list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    assert decode_rle(stream).tolist() == [1, 2, 3]


def test_brush_rle_matches_label_studio_sdk():
    """Our encoder decodes with the SDK's decoder and the SDK's encoder with ours."""
    py = LS_VENV / "bin" / "python"
    if not py.exists():
        pytest.skip(f"no {LS_VENV} with label_studio_sdk (run scripts/setup_labelstudio.sh)")
    from tfovss_fiftyone.labelstudio import mask_to_rle, rle_to_mask

    masks = list(_masks())[1:4]
    ours = [mask_to_rle(m) for m in masks]
    script = (
        "import json, sys, numpy as np\n"
        "from label_studio_sdk.converter.brush import decode_rle, mask2rle\n"
        "d = json.load(sys.stdin); out = []\n"
        "for rle, shape, m in zip(d['rle'], d['shapes'], d['masks']):\n"
        "    a = np.reshape(decode_rle(rle), (shape[0], shape[1], 4))[:, :, 3]\n"
        "    sdk = mask2rle((np.array(m, dtype=np.uint8) * 255))\n"
        "    out.append([(a > 0).astype(int).tolist(), [int(x) for x in sdk]])\n"
        "print(json.dumps(out))\n")
    payload = json.dumps({"rle": ours, "shapes": [m.shape for m in masks],
                          "masks": [m.astype(int).tolist() for m in masks]})
    r = subprocess.run([str(py), "-c", script], input=payload, capture_output=True, text=True,
                       timeout=300)
    if r.returncode and "No module named" in r.stderr:
        pytest.skip("label_studio_sdk is not importable in .venv-labelstudio")
    assert r.returncode == 0, r.stderr[-2000:]
    for m, (decoded_by_sdk, sdk_rle) in zip(masks, json.loads(r.stdout)):
        assert np.array_equal(np.array(decoded_by_sdk, bool), m)
        assert np.array_equal(rle_to_mask(sdk_rle, *m.shape), m)


def snapshot(ds):
    ds.reload()
    runs = {k: ds.get_run_info(k).config.serialize() for k in ds.list_runs()}
    runs.update({f"eval:{k}": ds.get_evaluation_info(k).config.serialize()
                 for k in ds.list_evaluations()})
    return (sorted(ds.get_field_schema()), json.dumps(ds.mask_targets, sort_keys=True,
                                                      default=str),
            json.dumps(runs, sort_keys=True, default=str), ds.values("id"))


def masks_of(ds, field):
    return {s.id: s[field].get_mask() for s in ds if s[field] is not None}


def submit(ls, task_id, result):
    return api(ls, "POST", f"/api/tasks/{task_id}/annotations",
               json={"result": result, "was_cancelled": False, "ground_truth": False})


# --- round trip -------------------------------------------------------------------------------

@needs_core
@needs_server
def test_send_then_load_unedited_is_identical(ls_env, prelabelled):
    from tfovss_fiftyone.labelstudio import (config_labels, load_corrections, send_for_review,
                                             rle_to_mask)

    ds = prelabelled
    names = ds.mask_targets["pre"]
    title = unique_name("unedited")
    rep = send_for_review(ds, "pre", project=title, batch_size=2)
    assert rep.num_created == 3 and rep.num_updated == 0 and rep.num_images_uploaded == 3
    proj = api(ls_env, "GET", f"/api/projects/{rep.project_id}")
    assert proj["title"] == title
    assert config_labels(proj["label_config"]) == [names[v] for v in sorted(names)]
    tasks = project_tasks(ls_env, rep.project_id)
    assert len(tasks) == 3 and {t["data"]["fo_sample_id"] for t in tasks} == set(ds.values("id"))
    pre = masks_of(ds, "pre")
    for t in tasks:
        s = ds[t["data"]["fo_filepath"]]
        assert rep.tasks[s.id] == t["id"]
        (pred,) = t["predictions"]
        assert pred["model_version"] == s.pre.tfovss_hash
        assert pred["score"] == pytest.approx(s.pre.mean_confidence, abs=1e-6)
        present = sorted(np.unique(pre[s.id]).tolist())
        assert [r["value"]["brushlabels"] for r in pred["result"]] == \
            [[names[v]] for v in present]
        for r in pred["result"]:
            v = next(k for k, n in names.items() if n == r["value"]["brushlabels"][0])
            assert np.array_equal(rle_to_mask(r["value"]["rle"], *pre[s.id].shape),
                                  pre[s.id] == v)
        # the uploaded image is served back, byte for byte
        import requests
        img = requests.get(ls_env["url"] + t["data"]["image"], timeout=60,
                           headers={"Authorization": f"Token {ls_env['token']}"})
        assert img.status_code == 200 and img.content == Path(s.filepath).read_bytes()

    # nobody reviewed yet: nothing loaded unless asked
    out = load_corrections(ds, "pre", "nothing_yet")
    assert out.num_reviewed == 0 and out.num_unreviewed == 3 and out.num_loaded == 0
    assert len(ds.exists("nothing_yet")) == 0
    out = load_corrections(ds, "pre", "unreviewed", include_unreviewed=True)
    assert out.num_loaded == 3 and out.num_reviewed == 0
    # nothing reviewed: no correction effort to store
    assert out.effort_key is None
    assert not {"nothing_yet_effort", "unreviewed_effort"} & set(ds.list_evaluations())
    ds.reload()
    assert ds.values("unreviewed.reviewed") == [False] * 3
    assert all(np.array_equal(m, pre[sid]) for sid, m in masks_of(ds, "unreviewed").items())

    # annotators accept the pre-labels unchanged
    for t in tasks:
        submit(ls_env, t["id"], t["predictions"][0]["result"])
    out = load_corrections(ds, "pre", "corrected")
    assert out.num_reviewed == 3 and out.num_loaded == 3
    assert out.pixels_changed == 0 and out.share_kept == 1.0 and out.mIoU == 1.0
    ds.reload()
    assert ds.mask_targets["corrected"] == names
    got = masks_of(ds, "corrected")
    assert set(got) == set(pre)
    for sid, m in got.items():
        assert m.dtype == pre[sid].dtype and np.array_equal(m, pre[sid])
    assert ds.values("corrected.reviewed") == [True] * 3
    assert ds.values("corrected.share_kept") == [1.0] * 3
    # the effort evaluation of an untouched pre-label: everything kept
    from tfovss_fiftyone.panels import evaluation_rows

    assert out.effort_key == "corrected_effort"
    row = {r["eval_key"]: r for r in evaluation_rows(ds)}["corrected_effort"]
    assert (row["mIoU"], row["aAcc"], row["kept"], row["pixels_changed"]) == \
        (100.0, 100.0, 100.0, 0)


@needs_core
@needs_server
def test_annotator_edit_changes_exactly_those_pixels(ls_env, prelabelled):
    from tfovss_fiftyone.labelstudio import load_corrections, mask_to_rle, send_for_review

    ds = prelabelled
    names = ds.mask_targets["pre"]
    rep = send_for_review(ds, "pre", project=unique_name("edit"))
    pre = masks_of(ds, "pre")
    tasks = {t["data"]["fo_sample_id"]: t for t in project_tasks(ls_env, rep.project_id)}
    sid = ds.first().id
    mask = pre[sid]
    h, w = mask.shape
    present = sorted(np.unique(mask).tolist())
    # repaint a rectangle to class "vehicle" (3): a new region after the others (last wins);
    # erase the region of the most frequent non-background class entirely
    rect = np.zeros((h, w), bool)
    rect[h // 4:h // 2, w // 4:w // 2] = True
    repaint_to = 3
    erased = max((v for v in present if v != 0), key=lambda v: (mask == v).sum())
    result = [r for r in tasks[sid]["predictions"][0]["result"]
              if r["value"]["brushlabels"] != [names[erased]]]
    result.append({"id": "repaint01", "from_name": "label", "to_name": "image",
                   "type": "brushlabels", "original_width": w, "original_height": h,
                   "image_rotation": 0, "value": {"format": "rle", "rle": mask_to_rle(rect),
                                                  "brushlabels": [names[repaint_to]]}})
    submit(ls_env, tasks[sid]["id"], result)
    for other, t in tasks.items():
        if other != sid:
            submit(ls_env, t["id"], t["predictions"][0]["result"])

    expected = mask.copy()
    expected[mask == erased] = 0           # unlabelled -> background
    expected[rect] = repaint_to
    out = load_corrections(ds, "pre", "edited")
    ds.reload()
    got = ds[sid].edited.get_mask()
    assert np.array_equal(got, expected)
    changed = expected != mask
    assert out.per_sample[sid]["pixels_changed"] == int(changed.sum()) > 0
    assert out.per_sample[sid]["share_kept"] == pytest.approx(1 - changed.mean(), abs=1e-12)
    assert out.pixels_changed == int(changed.sum())        # the other samples are unchanged
    total = sum(m.size for m in pre.values())
    assert out.share_kept == pytest.approx(1 - changed.sum() / total, abs=1e-12)
    for v in (erased, repaint_to):
        p = np.concatenate([(pre[s] == v).ravel() for s in pre])
        c = np.concatenate([((expected if s == sid else pre[s]) == v).ravel() for s in pre])
        row = out.per_class[names[v]]
        assert row["kept_pixels"] == int((p & c).sum())
        assert row["union_pixels"] == int((p | c).sum())
        assert row["iou"] == pytest.approx((p & c).sum() / (p | c).sum(), abs=1e-12)
    assert out.per_class[names[erased]]["corrected_pixels"] == int(
        sum((pre[s] == erased).sum() for s in pre if s != sid) + (expected == erased).sum())
    label = ds[sid].edited
    assert label.pixels_changed == int(changed.sum()) and label.reviewed is True

    # the effort is an evaluation of the dataset: pre-label vs correction as ground truth,
    # listed by the "OVSS evaluations" panel with the mIoU and per-class IoU of a hand count
    from tfovss_fiftyone.labelstudio import LabelStudioError
    from tfovss_fiftyone.panels import evaluation_rows, per_class_rows, run_settings_markdown

    assert out.effort_key == "edited_effort" and "edited_effort" in ds.list_evaluations()
    cfg = ds.get_evaluation_info("edited_effort").config
    assert (cfg.pred_field, cfg.gt_field, cfg.method) == ("pre", "edited", "tfovss")
    assert cfg.effort["pixels_changed"] == int(changed.sum())
    assert cfg.effort["pixels_compared"] == total and cfg.effort["num_reviewed"] == 3
    assert cfg.effort["per_class"][names[erased]]["kept_pixels"] == \
        out.per_class[names[erased]]["kept_pixels"]
    all_pre = np.concatenate([pre[s].ravel() for s in pre])
    all_cor = np.concatenate([(expected if s == sid else pre[s]).ravel() for s in pre])
    hand_iou = {}
    for v, n in names.items():
        union = ((all_pre == v) | (all_cor == v)).sum()
        if union:
            hand_iou[n] = ((all_pre == v) & (all_cor == v)).sum() / union
    hand_miou = float(np.mean(list(hand_iou.values())))
    assert hand_iou[names[erased]] < 1 and out.mIoU == pytest.approx(hand_miou, abs=1e-12)
    row = {r["eval_key"]: r for r in evaluation_rows(ds)}["edited_effort"]
    assert row["mIoU"] == round(100 * hand_miou, 2) < 100
    assert row["aAcc"] == row["kept"] == round(100 * (1 - changed.sum() / total), 2)
    assert row["pixels_changed"] == int(changed.sum())
    assert row["method"] == "sclip" and row["fields"] == "pre vs edited"
    assert f"{int(changed.sum()):,} of {total:,} px changed" in row["effort"]
    panel_iou = {c["name"]: c["iou"] for c in per_class_rows(ds, "edited_effort")}
    for n, iou in hand_iou.items():
        assert panel_iou[n] == pytest.approx(iou, abs=1e-12), n
    assert '"correction_effort"' in run_settings_markdown(ds, "edited_effort")
    # per sample: <key>_acc is the share kept
    ds.reload()
    assert ds[sid].edited_effort_acc == pytest.approx(1 - changed.mean(), abs=1e-12)
    assert sorted(ds.values("edited_effort_acc"))[1:] == [1.0, 1.0]
    # the key taken, or not a name: an error before anything is written
    before = snapshot(ds)
    with pytest.raises(LabelStudioError, match="evaluation with key 'edited_effort' exists"):
        load_corrections(ds, "pre", "edited_again", effort_key="edited_effort")
    with pytest.raises(LabelStudioError, match="effort evaluation key '1x'"):
        load_corrections(ds, "pre", "edited_again", effort_key="1x")
    assert snapshot(ds) == before

    # unlabelled -> ignore: the erased pixels become 255 and are left out of the effort
    out = load_corrections(ds, "pre", "edited_ignore", unlabelled="ignore")
    ds.reload()
    exp_ignore = mask.copy()
    exp_ignore[mask == erased] = 255
    exp_ignore[rect] = repaint_to
    assert np.array_equal(ds[sid].edited_ignore.get_mask(), exp_ignore)
    valid = exp_ignore != 255
    assert out.per_sample[sid]["pixels_compared"] == int(valid.sum())
    assert out.per_sample[sid]["pixels_changed"] == int((valid & (exp_ignore != mask)).sum())
    # ... and out of the effort evaluation (255 is its ignore index)
    res = ds.load_evaluation_results("edited_ignore_effort")
    assert res.config.ignore_index == 255
    compared = total - int((~valid).sum())
    assert res.aAcc == pytest.approx(1 - (valid & (exp_ignore != mask)).sum() / compared,
                                     abs=1e-12)
    assert res.aAcc == pytest.approx(out.share_kept, abs=1e-12)


@needs_core
@needs_server
def test_resend_updates_never_duplicates(ls_env, prelabelled):
    from tfovss_fiftyone.labelstudio import send_for_review

    ds = prelabelled
    title = unique_name("resend")
    first = send_for_review(ds, "pre", project=title)
    t0 = project_tasks(ls_env, first.project_id)
    submit(ls_env, t0[0]["id"], t0[0]["predictions"][0]["result"])
    again = send_for_review(ds, "pre", project=title, batch_size=2)
    assert again.project_id == first.project_id
    assert again.num_created == 0 and again.num_updated == 3 and again.num_images_uploaded == 0
    assert again.tasks == first.tasks
    t1 = project_tasks(ls_env, first.project_id)
    assert sorted(t["id"] for t in t1) == sorted(t["id"] for t in t0)
    assert all(len(t["predictions"]) == 1 for t in t1)
    assert sum(len(t["annotations"]) for t in t1) == 1          # annotators' work is kept
    projects = [p for p in api(ls_env, "GET", "/api/projects?page_size=1000")["results"]
                if p["title"] == title]
    assert len(projects) == 1
    info = ds.get_run_info("tfovss_labelstudio_pre").config
    assert info.tasks == {k: v for k, v in first.tasks.items()} and info.project_id == \
        first.project_id


# --- bad input --------------------------------------------------------------------------------

@needs_core
@needs_server
def test_bad_input_is_a_clear_error_and_changes_nothing(ls_env, prelabelled, fo, caplog):
    import logging

    from tfovss_fiftyone.labelstudio import LabelStudioError, load_corrections, send_for_review

    caplog.set_level(logging.DEBUG)
    ds = prelabelled
    names = ds.mask_targets["pre"]
    sent = send_for_review(ds, "pre", project=unique_name("bad"))
    before = snapshot(ds)
    errors = []

    def expect(match, fn, *a, **kw):
        with pytest.raises(LabelStudioError, match=match) as e:
            fn(*a, **kw)
        errors.append(str(e.value))
        assert snapshot(ds) == before, match

    closed = f"http://127.0.0.1:{free_port()}"
    expect("unreachable", send_for_review, ds, "pre", url=closed, project="x")
    expect("unreachable", load_corrections, ds, "pre", "x1", url=closed)
    wrong = "wrong-token-123456"
    expect("refused the API key", send_for_review, ds, "pre", api_key=wrong, project="x")
    expect("refused the API key", load_corrections, ds, "pre", "x2", api_key=wrong)
    expect("no mask_targets|does not exist", send_for_review, ds, "nofield", project="x")
    # a class missing from the project's config (someone edited it after the send)
    cfg = api(ls_env, "GET", f"/api/projects/{sent.project_id}")["label_config"]
    dropped = names[4]
    api(ls_env, "PATCH", f"/api/projects/{sent.project_id}",
        json={"label_config": "\n".join(line for line in cfg.splitlines()
                                        if f'value="{dropped}"' not in line)})
    expect(f"'{dropped}'.*missing from the labelling config", load_corrections, ds, "pre", "x3")
    # the project deleted between send and load
    api(ls_env, "DELETE", f"/api/projects/{sent.project_id}")
    expect("does not exist any more", load_corrections, ds, "pre", "x4")

    # a sample deleted in FiftyOne meanwhile (on a clone: its own sample ids)
    clone = ds.clone(unique_name("ls-clone"))
    try:
        s2 = send_for_review(clone, "pre", project=unique_name("deleted"))
        gone = clone.first().id
        clone.delete_samples([gone])
        before_clone = snapshot(clone)
        with pytest.raises(LabelStudioError, match=f"deleted from the dataset: {gone}") as e:
            load_corrections(clone, "pre", "y")
        errors.append(str(e.value))
        assert snapshot(clone) == before_clone
        out = load_corrections(clone, "pre", "y", skip_missing=True, include_unreviewed=True)
        assert out.num_loaded == 2 and gone not in out.per_sample
        # images Label Studio cannot reach
        bad = clone.first()
        bad.filepath = str(Path(bad.filepath).with_name("missing-image.jpg"))
        bad.save()
        before_clone = snapshot(clone)
        with pytest.raises(LabelStudioError, match="missing-image.jpg does not exist") as e:
            send_for_review(clone, "pre", project=s2.project_title)
        errors.append(str(e.value))
        with pytest.raises(LabelStudioError, match="outside the local-files document root"):
            send_for_review(clone.skip(1), "pre", project="z", image_route="local-files",
                            document_root=str(REPO_ROOT))
        assert snapshot(clone) == before_clone
    finally:
        clone.delete()

    for text in errors + [caplog.text, before[2]]:
        assert ls_env["token"] not in text and wrong not in text
    assert len(set(errors)) == len(errors)


# --- local files, operators, CLI ----------------------------------------------------------------

@needs_core
@needs_server
def test_local_files_route_serves_the_images(ls_env, prelabelled, data_dir):
    import requests

    from tfovss_fiftyone.labelstudio import send_for_review

    ds = prelabelled
    rep = send_for_review(ds, "pre", project=unique_name("local"), image_route="local-files",
                          document_root=str(data_dir))
    assert rep.num_images_uploaded == 0 and rep.num_created == 3
    for t in project_tasks(ls_env, rep.project_id):
        assert t["data"]["image"].startswith("/data/local-files/?d=coco2017/")
        r = requests.get(ls_env["url"] + t["data"]["image"], timeout=60,
                         headers={"Authorization": f"Token {ls_env['token']}"})
        assert r.status_code == 200
        assert r.content == Path(t["data"]["fo_filepath"]).read_bytes()


@needs_core
@needs_server
def test_operators_and_cli_run_headless(ls_env, prelabelled, foo):
    from tfovss_fiftyone.labelstudio import main

    ds = prelabelled
    uris = {o.uri for o in foo.list_operators(enabled=True)}
    assert URI_SEND in uris and URI_LOAD in uris
    title = unique_name("operator")
    r = foo.execute_operator(URI_SEND, ctx={"dataset": ds, "params": {
        "label_field": "pre", "url": ls_env["url"], "project": title, "batch_size": 2}})
    assert r.error is None, r.error
    assert r.result["num_created"] == 3 and r.result["num_tasks"] == 3
    tasks = project_tasks(ls_env, r.result["project_id"])
    for t in tasks:
        submit(ls_env, t["id"], t["predictions"][0]["result"])
    r = foo.execute_operator(URI_LOAD, ctx={"dataset": ds, "params": {
        "label_field": "pre", "out_field": "via_operator", "url": ls_env["url"]}})
    assert r.error is None, r.error
    assert r.result["num_loaded"] == 3 and r.result["share_kept_pct"] == 100.0
    ds.reload()
    pre = masks_of(ds, "pre")
    assert all(np.array_equal(m, pre[s]) for s, m in masks_of(ds, "via_operator").items())
    # the CLI verb (key from the environment only)
    assert main(["load", ds.name, "pre", "via_cli"]) == 0
    ds.reload()
    assert len(ds.exists("via_cli")) == 3
    assert main(["load", ds.name, "pre", "via_cli"]) == 2      # exists, no --overwrite
