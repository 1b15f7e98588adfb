"""The annotation round trip through Label Studio: send a Segmentation field's pre-labels for
review, load the corrections back, measure how much of the pre-label the annotators kept.

    from tfovss_fiftyone.labelstudio import send_for_review, load_corrections
    sent = send_for_review(dataset.take(50), "ovss_sclip", url="http://127.0.0.1:8080",
                           project="street scenes, round 1")        # key: LABEL_STUDIO_API_KEY
    ... annotators correct the tasks in Label Studio ...
    out = load_corrections(dataset, "ovss_sclip", "ovss_sclip_corrected",
                           url="http://127.0.0.1:8080")
    out.share_kept, out.per_class["car"]["iou"], out.per_sample[sample_id]["pixels_changed"]

How it talks to Label Studio: its documented REST API through ``requests``, not through
``label-studio-sdk``: installing the SDK (let alone the server) into the environment that holds
FiftyOne and torch downgrades numpy and opencv under them. The server runs from its own
environment (``scripts/setup_labelstudio.sh``). See ``docs/labelstudio.md``.

Rules (also in ``docs/labelstudio.md``):

* The project's labelling config has one ``BrushLabels`` label per class of the field's
  ``mask_targets`` (background included), coloured like the App's colour pool.
* Each sample's pre-label goes up as one prediction: one brush region per class present, in Label
  Studio's brush RLE (exact, see :func:`mask_to_rle`), ``model_version`` = the tfovss settings
  hash of the run that wrote the field, ``score`` = the label's mean confidence when known.
* Images reach Label Studio by upload (``image_route="upload"``, default) or through Label
  Studio's local-files serving (``image_route="local-files"``, see the docs).
* Sample id <-> task id is kept in the run info ``tfovss_labelstudio_<field>`` and in each task's
  data (``fo_sample_id``); a re-send replaces the tfovss prediction of existing tasks (the
  annotators' work stays) and creates tasks only for new samples.
* Loading: a task is *reviewed* once it has a submitted (not skipped) annotation; its latest one
  is loaded. Overlapping regions: the last region of the annotation wins (Label Studio draws
  later regions on top). Unlabelled pixels become ``background_value`` or ``ignore_value``.
  Only reviewed tasks are loaded unless ``include_unreviewed=True`` (then the others carry their
  pre-label, marked ``reviewed=False``).
* The correction effort is stored as an MMSeg-exact evaluation of the dataset (key
  ``<out_field>_effort`` by default): the pre-label scored as prediction against the corrected
  field as ground truth, on the reviewed samples, with the effort figures in the run's config
  (``config.effort``). The "OVSS evaluations" panel lists it like any other run.
* Every check and every download happens before the first write: a failure leaves the dataset as
  it was. API keys never appear in errors, logs or run info.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence
from xml.etree import ElementTree

import numpy as np

logger = logging.getLogger(__name__)

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
RUN_PREFIX = "tfovss_labelstudio_"
#: the correction-effort evaluation of ``load_corrections(..., out_field)`` is ``out_field + this``
EFFORT_KEY_SUFFIX = "_effort"
#: names inside the labelling config and the task data
FROM_NAME = "label"
TO_NAME = "image"
IMAGE_KEY = "image"
SAMPLE_KEY = "fo_sample_id"
IMAGE_ROUTES = ("upload", "local-files")
UNLABELLED = ("background", "ignore")
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# the App's default colour pool (fiftyone.core.config.AppConfig.color_pool)
_APP_COLOURS = ("#ee0000", "#ee6600", "#993300", "#996633", "#999900", "#009900", "#003300",
                "#009999", "#000099", "#0066ff", "#6600ff", "#cc33cc", "#777799")


class LabelStudioError(RuntimeError):
    """A Label Studio round trip that could not run; raised before the dataset is changed."""


# ---------------------------------------------------------------------------------------------
# Label Studio's brush RLE (thi.ng rle-pack over the RGBA bytes of the mask image)
# ---------------------------------------------------------------------------------------------
# Stream: 32 bits value count, 5 bits (word size - 1), 4 x 4 bits (run-length field sizes - 1),
# then chunks: 1 bit kind (1 = one value repeated, 0 = literal values), 2 bits index into the
# field sizes, (count - 1) in that many bits, then the value once (repeat) or count values
# (literal), each in word-size bits; zero-padded to a whole byte. The mask image is RGBA: four
# bytes per pixel, all 255 where the region is painted and 0 elsewhere.

_WORD = 8
_RUN_SIZES = (3, 4, 8, 16)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A 2-D boolean mask as Label Studio brush RLE (a list of byte values)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a brush mask must be 2-D, got shape {mask.shape}")
    flat = np.where(mask.ravel() != 0, 255, 0).astype(np.uint8)
    return encode_rle(np.repeat(flat, 4))


def encode_rle(values: np.ndarray) -> list[int]:
    """Byte values (a flat uint8 array) as rle-pack bytes, with repeat chunks only."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    n = len(values)
    header = f"{n:032b}{_WORD - 1:05b}" + "".join(f"{s - 1:04b}" for s in _RUN_SIZES)
    parts = [header]
    if n:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [n]]))
        longest = 1 << _RUN_SIZES[-1]
        for start, length in zip(starts.tolist(), lengths.tolist()):
            value = int(values[start])
            while length > 0:
                count = min(length, longest)
                idx = next(i for i, s in enumerate(_RUN_SIZES) if count - 1 < (1 << s))
                parts.append(f"1{idx:02b}{count - 1:0{_RUN_SIZES[idx]}b}{value:08b}")
                length -= count
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def decode_rle(rle: Sequence[int]) -> np.ndarray:
    """The flat values of an rle-pack stream (any word size, repeat and literal chunks)."""
    try:
        raw = np.asarray(rle, dtype=np.int64)
        if raw.ndim != 1 or (raw.size and (raw.min() < 0 or raw.max() > 255)):
            raise ValueError
        bits = np.unpackbits(raw.astype(np.uint8))
    except (TypeError, ValueError):
        raise LabelStudioError("brush RLE must be a list of byte values (0-255)") from None
    text = (bits + ord("0")).tobytes().decode("ascii")  # int(text[a:b], 2) reads a field
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        if pos + k > len(text):
            raise LabelStudioError("brush RLE is truncated")
        v = int(text[pos:pos + k], 2) if k else 0
        pos += k
        return v

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint32 if word > 8 else np.uint8)
    weights = (1 << np.arange(word - 1, -1, -1)).astype(np.uint64)
    i = 0
    while i < num:
        repeat = read(1)
        count = 1 + read(sizes[read(2)])
        if i + count > num:
            raise LabelStudioError("brush RLE runs past its declared length")
        if repeat:
            out[i:i + count] = read(word)
        else:
            if pos + count * word > len(bits):
                raise LabelStudioError("brush RLE is truncated")
            chunk = bits[pos:pos + count * word].reshape(count, word).astype(np.uint64)
            out[i:i + count] = chunk @ weights
            pos += count * word
        i += count
    return out


def rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """A brush RLE as a ``(height, width)`` boolean mask: painted where the alpha byte is not 0."""
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise LabelStudioError(f"brush RLE holds {flat.size} values, not {height}x{width}x4 "
                               "(RGBA of the image)")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


# ---------------------------------------------------------------------------------------------
# REST client (requests; the key only ever lives in the session's headers)
# ---------------------------------------------------------------------------------------------

def resolve_api_key(api_key: str | None = None) -> str:
    """``api_key`` or ``$LABEL_STUDIO_API_KEY`` (the operators pass FiftyOne's secret)."""
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise LabelStudioError(f"no Label Studio API key: pass api_key or set {API_KEY_ENV}")
    return str(key).strip()


def resolve_url(url: str | None = None) -> str:
    url = (url or os.environ.get(URL_ENV) or "").strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise LabelStudioError(f"Label Studio URL {url!r} is not an http(s) URL: pass url or "
                               f"set {URL_ENV}")
    return url


class LabelStudioClient:
    """The few REST calls the round trip needs. Legacy tokens go as ``Token <key>``; personal
    access tokens (JWT refresh tokens) are exchanged for an access token first."""

    def __init__(self, url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0):
        import requests

        self._requests = requests
        self.url = resolve_url(url)
        key = resolve_api_key(api_key)
        self._secret = key
        self.timeout = timeout
        self._session = requests.Session()
        if key.count(".") == 2:  # a personal access token (JWT)
            access = self.request("POST", "/api/token/refresh", "exchange the access token",
                                  json={"refresh": key}, auth=False).json().get("access")
            self._session.headers["Authorization"] = f"Bearer {access}"
        else:
            self._session.headers["Authorization"] = f"Token {key}"

    def _scrub(self, text: str) -> str:
        return str(text).replace(self._secret, "***") if self._secret else str(text)

    def request(self, method: str, path: str, what: str, *, auth: bool = True,
                missing: str | None = None, **kw):
        """One call; every failure becomes a :class:`LabelStudioError` that says ``what`` was
        being done (``missing``: the message for a 404)."""
        req = self._requests
        try:
            send = self._session.request if auth else req.request
            r = send(method, self.url + path, timeout=self.timeout, **kw)
        except (req.ConnectionError, req.Timeout) as e:
            kind = "timed out" if isinstance(e, req.Timeout) else "is unreachable"
            raise LabelStudioError(f"Label Studio at {self.url} {kind} (while trying to "
                                   f"{what})") from None
        except req.RequestException as e:
            raise LabelStudioError(self._scrub(f"Label Studio request failed (while trying to "
                                               f"{what}): {type(e).__name__}")) from None
        if r.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the API key (HTTP "
                                   f"{r.status_code}) while trying to {what}: check "
                                   f"{API_KEY_ENV} (a wrong or expired token)")
        if r.status_code == 404 and missing:
            raise LabelStudioError(missing)
        if r.status_code >= 400:
            body = self._scrub(r.text[:300].replace("\n", " "))
            raise LabelStudioError(f"Label Studio answered HTTP {r.status_code} while trying to "
                                   f"{what}: {body}")
        return r

    def get_json(self, path: str, what: str, **kw):
        return self.request("GET", path, what, **kw).json()

    def version(self) -> str:
        return str(self.get_json("/api/version", "read its version").get("release", "?"))

    def whoami(self) -> dict:
        return self.get_json("/api/current-user/whoami", "check the API key")

    def projects(self) -> list[dict]:
        out, page = [], 1
        while True:
            d = self.get_json(f"/api/projects?page={page}&page_size=100", "list the projects")
            rows = d.get("results", d) if isinstance(d, dict) else d
            out += rows
            if not isinstance(d, dict) or not d.get("next"):
                return out
            page += 1

    def project(self, project_id: int, missing: str | None = None) -> dict:
        return self.get_json(f"/api/projects/{int(project_id)}", "read the project",
                             missing=missing or f"Label Studio project {project_id} does not "
                                                "exist (deleted?)")

    def tasks(self, project_id: int, *, fields: str = "task_only") -> list[dict]:
        """Every task of a project (with annotations and predictions when ``fields="all"``)."""
        out, page = [], 1
        while True:
            r = self.request("GET", f"/api/tasks?project={int(project_id)}&page={page}"
                             f"&page_size=100&fields={fields}", "list the project's tasks",
                             missing=f"Label Studio project {project_id} does not exist "
                                     "(deleted?)")
            d = r.json()
            rows = d.get("tasks", d.get("results", [])) if isinstance(d, dict) else d
            out += rows
            total = d.get("total", len(out)) if isinstance(d, dict) else len(out)
            if not rows or len(out) >= total:
                return out
            page += 1


# ---------------------------------------------------------------------------------------------
# labelling config
# ---------------------------------------------------------------------------------------------

def label_config(mask_targets: Mapping[int, str], colours: Mapping[int, str] | None = None
                 ) -> str:
    """An image + ``BrushLabels`` config with one label per class (value order)."""
    from xml.sax.saxutils import quoteattr

    labels = []
    for v, name in sorted((int(k), str(n)) for k, n in mask_targets.items()):
        colour = (colours or {}).get(v) or _APP_COLOURS[v % len(_APP_COLOURS)]
        labels.append(f"    <Label value={quoteattr(name)} background={quoteattr(colour)}/>")
    return (f'<View>\n  <Image name="{TO_NAME}" value="${IMAGE_KEY}" zoom="true"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n' + "\n".join(labels) +
            "\n  </BrushLabels>\n</View>")


def config_labels(config: str) -> list[str]:
    """The ``Label`` values of the ``BrushLabels`` tag named ``FROM_NAME`` of a config."""
    try:
        root = ElementTree.fromstring(config or "<View/>")
    except ElementTree.ParseError as e:
        raise LabelStudioError(f"the project's labelling config is not valid XML: {e}") from None
    for tag in root.iter("BrushLabels"):
        if tag.get("name") == FROM_NAME:
            return [lab.get("value") for lab in tag.iter("Label")]
    return []


def _colours_of(dataset, field_name: str) -> dict[int, str]:
    """Mask colours the dataset's App colour scheme sets (``{value: "#rrggbb"}``), if any."""
    out = {}
    try:
        scheme = dataset.app_config.color_scheme
        for entry in (getattr(scheme, "default_mask_targets_colors", None) or []):
            out[int(entry["intTarget"])] = entry["color"]
        for f in (getattr(scheme, "fields", None) or []):
            if f.get("path") == field_name:
                for entry in f.get("maskTargetsColors") or []:
                    out[int(entry["intTarget"])] = entry["color"]
    except Exception:  # colours are cosmetic
        pass
    return out


# ---------------------------------------------------------------------------------------------
# the field being sent
# ---------------------------------------------------------------------------------------------

def run_key_for(label_field: str) -> str:
    return RUN_PREFIX + label_field


def _mask_targets(dataset, label_field: str) -> dict[int, str]:
    targets = (dataset.mask_targets or {}).get(label_field) or dataset.default_mask_targets
    if not targets:
        raise LabelStudioError(f"field '{label_field}' has no mask_targets: its classes need "
                               "names to become Label Studio labels")
    out = {int(k): str(v) for k, v in targets.items()}
    names = list(out.values())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LabelStudioError(f"mask_targets of '{label_field}' name {dup} for several values; "
                               "Label Studio labels must be unique")
    return out


def _check_segmentation_field(samples, label_field: str) -> None:
    import fiftyone as fo

    if samples.media_type != "image":
        raise LabelStudioError(f"Label Studio round trips need image samples, got "
                               f"{samples.media_type}")
    schema = samples._dataset.get_field_schema()
    if label_field not in schema:
        raise LabelStudioError(f"field '{label_field}' does not exist")
    doc = getattr(schema[label_field], "document_type", None)
    if doc is None or not issubclass(doc, fo.Segmentation):
        raise LabelStudioError(f"field '{label_field}' holds "
                               f"{getattr(doc, '__name__', 'no labels')}, not Segmentation")


def _read_mask(label, what: str) -> np.ndarray:
    try:
        mask = label.get_mask()
    except Exception as e:
        raise LabelStudioError(f"cannot read the mask of {what}: {e}") from None
    if mask is None or np.asarray(mask).ndim != 2:
        raise LabelStudioError(f"the mask of {what} is missing or not 2-D")
    return np.asarray(mask)


def prediction_regions(mask: np.ndarray, names: Mapping[int, str]) -> list[dict]:
    """One brush region per class present in ``mask`` (value order)."""
    h, w = mask.shape
    regions = []
    for v in np.unique(mask).tolist():
        regions.append({
            "id": uuid.uuid4().hex[:10], "from_name": FROM_NAME, "to_name": TO_NAME,
            "type": "brushlabels", "origin": "prediction", "original_width": int(w),
            "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask == v),
                      "brushlabels": [names[int(v)]]}})
    return regions


# ---------------------------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------------------------

@dataclass
class SendReport:
    label_field: str
    url: str
    project_id: int
    project_title: str
    model_version: str
    image_route: str
    num_created: int = 0
    num_updated: int = 0
    num_unlabelled: int = 0            # samples without a label in the field: not sent
    num_images_uploaded: int = 0
    tasks: dict = field(default_factory=dict)   # {sample id: task id}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def send_for_review(samples, label_field: str, *, url: str | None = None,
                    api_key: str | None = None, project: str | None = None,
                    image_route: str = "upload", document_root: str | None = None,
                    batch_size: int = 20,
                    progress: Callable[[int, int, str], None] | None = None) -> SendReport:
    """Sends the pre-labels of ``label_field`` on ``samples`` to a Label Studio project as
    predictions (see the module docstring for the rules).

    Args:
        samples: a dataset or view (image samples); samples without a label are not sent
        label_field: an ``fo.Segmentation`` field with ``mask_targets``
        url, api_key: the server (``$LABEL_STUDIO_URL``) and its key (``$LABEL_STUDIO_API_KEY``)
        project: the project's title (created if no project has it; default
            ``"tfovss <dataset> <field>"``)
        image_route: ``"upload"`` (images are uploaded) or ``"local-files"`` (Label Studio
            serves them from ``document_root``, its ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``)
        batch_size: tasks (and images) per request
        progress: ``progress(done, total, label)`` after each batch

    Returns:
        a :class:`SendReport`; the sample id <-> task id map is also stored in the run info
        ``tfovss_labelstudio_<field>``
    """
    t0 = time.time()
    dataset = samples._dataset
    _check_segmentation_field(samples, label_field)
    if image_route not in IMAGE_ROUTES:
        raise LabelStudioError(f"image_route {image_route!r} is not one of {IMAGE_ROUTES}")
    names = _mask_targets(dataset, label_field)
    batch_size = max(1, int(batch_size or 1))
    if image_route == "local-files":
        if not document_root:
            raise LabelStudioError("image_route 'local-files' needs document_root (the "
                                   "server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
        document_root = os.path.abspath(document_root)

    # -- everything local is read and checked first ------------------------------------------
    ids = samples.values("id")
    paths = samples.values("filepath")
    labels = samples.values(label_field)
    todo = []  # (sample id, filepath, mask, score, settings hash)
    unlabelled = 0
    for sid, path, label in zip(ids, paths, labels):
        if label is None:
            unlabelled += 1
            continue
        mask = _read_mask(label, f"sample {sid} ({path})")
        extra = sorted(set(np.unique(mask).tolist()) - set(names))
        if extra:
            raise LabelStudioError(f"sample {sid} ({path}): mask values {extra} have no class in "
                                   f"the mask_targets of '{label_field}'")
        if not os.path.isfile(path):
            raise LabelStudioError(f"sample {sid}: image {path} does not exist, Label Studio "
                                   "could not show it")
        if image_route == "local-files" and \
                os.path.commonpath([document_root, os.path.abspath(path)]) != document_root:
            raise LabelStudioError(f"sample {sid}: image {path} is outside the local-files "
                                   f"document root {document_root}: Label Studio cannot reach "
                                   "it")
        score = getattr(label, "mean_confidence", None) if "mean_confidence" in label else None
        h = label["tfovss_hash"] if "tfovss_hash" in label else None
        todo.append((sid, path, mask, score, h))
    hashes = sorted({h for *_, h in todo if h})
    model_version = hashes[0] if len(hashes) == 1 else (
        "tfovss-" + hashlib.sha256("|".join(hashes).encode()).hexdigest()[:12] if hashes
        else "tfovss")

    client = LabelStudioClient(url, api_key)
    client.whoami()
    title = project or f"tfovss {dataset.name} {label_field}"
    proj = _ensure_project(client, title, names, _colours_of(dataset, label_field))
    pid = int(proj["id"])
    existing = {}
    for t in client.tasks(pid):
        sid = (t.get("data") or {}).get(SAMPLE_KEY)
        if sid and sid not in existing:
            existing[sid] = int(t["id"])

    report = SendReport(label_field=label_field, url=client.url, project_id=pid,
                        project_title=title, model_version=model_version,
                        image_route=image_route, num_unlabelled=unlabelled)
    total = len(todo)
    done = 0
    if image_route == "local-files":
        _ensure_local_storage(client, pid, [p for _, p, *_ in todo], document_root)
    for start in range(0, total, batch_size):
        chunk = todo[start:start + batch_size]
        new = [x for x in chunk if x[0] not in existing]
        old = [x for x in chunk if x[0] in existing]
        for sid, path, mask, score, h in old:
            _replace_prediction(client, existing[sid], mask, names, score, h or model_version)
            report.num_updated += 1
        if new:
            if image_route == "upload":
                urls = _upload_images(client, pid, [p for _, p, *_ in new])
                report.num_images_uploaded += len(new)
            else:
                urls = [_local_files_url(p, document_root) for _, p, *_ in new]
            rows = []
            for (sid, path, mask, score, h), image_url in zip(new, urls):
                pred = {"model_version": h or model_version,
                        "result": prediction_regions(mask, names)}
                if score is not None:
                    pred["score"] = float(score)
                rows.append({"data": {IMAGE_KEY: image_url, SAMPLE_KEY: sid,
                                      "fo_filepath": path},
                             "predictions": [pred]})
            client.request("POST", f"/api/projects/{pid}/import", "import the tasks",
                           json=rows)
            report.num_created += len(new)
        done += len(chunk)
        if progress is not None:
            progress(done, total, f"{done}/{total} samples sent")
    mapping = {}
    for t in client.tasks(pid):
        sid = (t.get("data") or {}).get(SAMPLE_KEY)
        if sid and sid not in mapping:
            mapping[sid] = int(t["id"])
    sent = {sid for sid, *_ in todo}
    report.tasks = {sid: tid for sid, tid in mapping.items() if sid in sent}
    lost = sorted(sent - set(report.tasks))
    if lost:
        raise LabelStudioError(f"Label Studio did not create tasks for samples {lost[:5]}")
    report.seconds = round(time.time() - t0, 3)
    _store_send_run(dataset, report, names, mapping)
    return report


def _ensure_project(client: LabelStudioClient, title: str, names: Mapping[int, str],
                    colours: Mapping[int, str]) -> dict:
    """The project titled ``title``, created or its config brought to every class."""
    config = label_config(names, colours)
    found = [p for p in client.projects() if p.get("title") == title]
    if not found:
        return client.request("POST", "/api/projects", "create the project",
                              json={"title": title, "label_config": config,
                                    "description": "Pre-labels from tfovss"}).json()
    proj = found[0]
    if config_labels(proj.get("label_config", "")) != list(names.values()) or \
            proj.get("label_config") != config:
        proj = client.request("PATCH", f"/api/projects/{proj['id']}",
                              "update the project's labelling config",
                              json={"label_config": config}).json()
    return proj


def _upload_images(client: LabelStudioClient, pid: int, paths: Sequence[str]) -> list[str]:
    """Uploads image files (not creating tasks); their URLs inside Label Studio, in order."""
    files = []
    try:
        for i, p in enumerate(paths):
            files.append((f"file{i}", (os.path.basename(p), open(p, "rb"))))
        r = client.request("POST", f"/api/projects/{pid}/import?commit_to_project=false",
                           "upload the images", files=files).json()
    finally:
        for _, (_, fh) in files:
            fh.close()
    upload_ids = r.get("file_upload_ids") or []
    if len(upload_ids) != len(paths):
        raise LabelStudioError(f"Label Studio stored {len(upload_ids)} of {len(paths)} uploaded "
                               "images")
    ids_param = "[" + ",".join(str(int(i)) for i in upload_ids) + "]"
    rows = client.get_json(f"/api/projects/{pid}/file-uploads?ids={ids_param}",
                           "read the uploaded files")
    by_id = {int(u["id"]): u["file"] for u in rows}
    return ["/data/" + by_id[int(i)].lstrip("/") for i in upload_ids]


def _local_files_url(path: str, document_root: str) -> str:
    from urllib.parse import quote

    rel = os.path.relpath(os.path.abspath(path), document_root)
    return "/data/local-files/?d=" + quote(rel.replace(os.sep, "/"))


def _ensure_local_storage(client: LabelStudioClient, pid: int, paths: Sequence[str],
                          document_root: str) -> None:
    """A local-files storage of the project covering the images' folder (Label Studio serves
    ``/data/local-files/`` only under a storage's path)."""
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) \
        if paths else document_root
    have = client.get_json(f"/api/storages/localfiles?project={pid}", "list local storages")
    if any(folder == s.get("path") or folder.startswith(str(s.get("path")) + os.sep)
           for s in have):
        return
    client.request("POST", "/api/storages/localfiles", "connect the local-files folder",
                   json={"project": pid, "path": folder, "use_blob_urls": True,
                         "title": "tfovss images", "regex_filter": ""})


def _replace_prediction(client: LabelStudioClient, task_id: int, mask, names, score,
                        model_version: str) -> None:
    """The task's predictions replaced by this pre-label (the annotations stay)."""
    for old in client.get_json(f"/api/predictions?task={task_id}", "list the task's "
                               "predictions"):
        if int(old.get("task", task_id)) == task_id:
            client.request("DELETE", f"/api/predictions/{old['id']}", "replace the prediction")
    body = {"task": task_id, "model_version": model_version,
            "result": prediction_regions(mask, names)}
    if score is not None:
        body["score"] = float(score)
    client.request("POST", "/api/predictions", "send the prediction", json=body)


def _store_send_run(dataset, report: SendReport, names, mapping) -> None:
    import fiftyone.core.runs as fors

    key = run_key_for(report.label_field)
    tasks = {}
    if key in dataset.list_runs():
        prev = dataset.get_run_info(key).config
        if getattr(prev, "project_id", None) == report.project_id and \
                getattr(prev, "url", None) == report.url:
            tasks.update(getattr(prev, "tasks", {}) or {})
    tasks.update(report.tasks)
    config = fors.RunConfig(
        label_field=report.label_field, url=report.url, project_id=report.project_id,
        project_title=report.project_title, model_version=report.model_version,
        image_route=report.image_route, mask_targets={str(k): v for k, v in names.items()},
        tasks=tasks, last_send={k: v for k, v in report.to_dict().items() if k != "tasks"})
    dataset.register_run(key, config, overwrite=True, cleanup=False)


def sent_run_info(dataset, label_field: str) -> dict:
    """What :func:`send_for_review` stored for ``label_field`` (error if never sent)."""
    key = run_key_for(label_field)
    if key not in dataset.list_runs():
        raise LabelStudioError(f"field '{label_field}' was never sent to Label Studio (no run "
                               f"'{key}')")
    cfg = dataset.get_run_info(key).config
    d = cfg.serialize() if hasattr(cfg, "serialize") else dict(vars(cfg))
    return {k: v for k, v in d.items() if k not in ("cls", "type", "method")}


# ---------------------------------------------------------------------------------------------
# load corrections
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    label_field: str
    out_field: str
    project_id: int
    num_reviewed: int = 0
    num_unreviewed: int = 0
    num_loaded: int = 0
    pixels_changed: int = 0
    pixels_compared: int = 0
    share_kept: float | None = None     # pixels whose class the annotators kept / compared
    mIoU: float | None = None           # pre-label vs corrected, over classes present in either
    effort_key: str | None = None       # the evaluation that stores the effort (None: none
    #                                     reviewed, nothing to compare)
    per_class: dict = field(default_factory=dict)    # {name: {iou, pre_pixels, ...}}
    per_sample: dict = field(default_factory=dict)   # {sample id: {task_id, reviewed, ...}}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _latest_submitted(task: dict) -> dict | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                    int(a.get("id", 0))))


def regions_to_mask(result: Sequence[dict], shape: tuple[int, int], values: Mapping[str, int],
                    fill: int, what: str, dtype=np.uint8) -> np.ndarray:
    """The brush regions of an annotation / prediction painted in order: the last region wins
    where they overlap; unpainted pixels get ``fill``."""
    h, w = shape
    out = np.full((h, w), fill, dtype=dtype)
    for region in result or []:
        if region.get("type") != "brushlabels" or region.get("from_name") != FROM_NAME:
            continue
        value = region.get("value") or {}
        labs = value.get("brushlabels") or []
        if len(labs) != 1:
            raise LabelStudioError(f"{what}: a brush region carries {len(labs)} labels, not one")
        if labs[0] not in values:
            raise LabelStudioError(f"{what}: label '{labs[0]}' is not a class of the field's "
                                   "mask_targets")
        rh, rw = int(region.get("original_height", h)), int(region.get("original_width", w))
        if (rh, rw) != (h, w):
            raise LabelStudioError(f"{what}: a region is {rw}x{rh}, the pre-label {w}x{h}")
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise LabelStudioError(f"{what}: a brush region is not in RLE format")
        out[rle_to_mask(value["rle"], h, w)] = values[labs[0]]
    return out


def correction_effort(pre: np.ndarray, corrected: np.ndarray, names: Mapping[int, str],
                      ignore_value: int | None = None) -> dict:
    """Pre-label vs corrected on the pixels the corrected mask labels (``ignore_value`` pixels
    are left out): pixels changed, share kept, and per class the intersection, union, IoU."""
    if pre.shape != corrected.shape:
        raise LabelStudioError(f"pre-label {pre.shape} and correction {corrected.shape} differ "
                               "in size")
    valid = np.ones(pre.shape, bool) if ignore_value is None else corrected != ignore_value
    compared = int(valid.sum())
    changed = int((valid & (pre != corrected)).sum())
    per_class = {}
    for v, name in names.items():
        p = valid & (pre == v)
        c = valid & (corrected == v)
        inter, union = int((p & c).sum()), int((p | c).sum())
        if union:
            per_class[name] = {"pre_pixels": int(p.sum()), "corrected_pixels": int(c.sum()),
                               "kept_pixels": inter, "union_pixels": union,
                               "iou": inter / union}
    ious = [c["iou"] for c in per_class.values()]
    return {"pixels_compared": compared, "pixels_changed": changed,
            "share_kept": (compared - changed) / compared if compared else None,
            "mIoU": float(np.mean(ious)) if ious else None, "per_class": per_class}


def load_corrections(samples, label_field: str, out_field: str, *, url: str | None = None,
                     api_key: str | None = None, unlabelled: str = "background",
                     background_value: int = 0, ignore_value: int = 255,
                     include_unreviewed: bool = False, skip_missing: bool = False,
                     overwrite: bool = False, output_dir: str | None = None,
                     effort_key: str | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> LoadReport:
    """Loads the submitted annotations of the tasks :func:`send_for_review` made for
    ``label_field`` into ``out_field`` (same ``mask_targets``), with the correction effort.

    Args:
        samples: the dataset or a view of it (tasks of samples outside it are left alone)
        label_field: the field that was sent (its run info names the project)
        out_field: the new ``fo.Segmentation`` field
        url, api_key: the server (default: the URL the field was sent to) and its key
        unlabelled: pixels no region covers become ``"background"`` (``background_value``) or
            ``"ignore"`` (``ignore_value``, left out of the effort numbers)
        include_unreviewed: also load tasks nobody submitted yet (their pre-label, marked
            ``reviewed=False``)
        skip_missing: skip tasks whose sample was deleted from the dataset (else an error)
        overwrite: replace ``out_field`` if it exists
        output_dir: write the masks as PNG files there (default: in the database)
        effort_key: key of the correction-effort evaluation (default ``<out_field>_effort``):
            ``label_field`` scored against ``out_field`` on the reviewed samples by
            :func:`tfovss_fiftyone.evaluation.run_evaluation`, the effort figures in its
            ``config.effort``, per-sample ``<effort_key>_miou`` / ``<effort_key>_acc`` (the
            share kept); ``overwrite`` also replaces it

    Returns:
        a :class:`LoadReport` (``effort_key`` set when the evaluation was stored); the effort is
        also on each label (``pixels_changed``, ``share_kept``, ``iou_vs_prelabel``)
    """
    from tfovss_fiftyone.evaluation import run_evaluation
    import fiftyone as fo

    t0 = time.time()
    dataset = samples._dataset
    _check_segmentation_field(samples, label_field)
    if not out_field or not _FIELD_RE.match(out_field):
        raise LabelStudioError(f"output field name {out_field!r} must start with a letter and "
                               "contain only letters, digits and _")
    if out_field == label_field:
        raise LabelStudioError("the corrections need a field other than the pre-label's")
    schema = dataset.get_field_schema()
    if out_field in schema:
        doc = getattr(schema[out_field], "document_type", None)
        if doc is None or not issubclass(doc, fo.Segmentation):
            raise LabelStudioError(f"field '{out_field}' exists and is not a Segmentation field")
        if not overwrite:
            raise LabelStudioError(f"field '{out_field}' exists; choose another name or allow "
                                   "overwriting")
    if unlabelled not in UNLABELLED:
        raise LabelStudioError(f"unlabelled must be one of {UNLABELLED}, got {unlabelled!r}")
    names = _mask_targets(dataset, label_field)
    fill = int(background_value if unlabelled == "background" else ignore_value)
    if unlabelled == "ignore" and fill in names:
        raise LabelStudioError(f"ignore value {fill} is a class of '{label_field}' "
                               f"({names[fill]}); choose another ignore value")
    if unlabelled == "background" and fill not in names:
        raise LabelStudioError(f"background value {fill} is not a class of '{label_field}'")
    dtype = np.uint8 if max(list(names) + [fill]) <= 255 else np.uint16
    effort_key = out_field + EFFORT_KEY_SUFFIX if effort_key is None else effort_key
    _check_effort_key(dataset, effort_key, overwrite)
    values = {n: v for v, n in names.items()}
    info = sent_run_info(dataset, label_field)
    pid = int(info["project_id"])
    client = LabelStudioClient(url or info.get("url"), api_key)
    proj = client.project(pid, missing=f"Label Studio project {pid} "
                                       f"('{info.get('project_title')}') does not exist any "
                                       "more: was it deleted after the send?")
    missing_labels = [n for n in names.values() if n not in config_labels(
        proj.get("label_config", ""))]
    if missing_labels:
        raise LabelStudioError(f"class(es) {missing_labels} of '{label_field}' are missing from "
                               f"the labelling config of Label Studio project {pid}")
    tasks = [t for t in client.tasks(pid, fields="all")
             if (t.get("data") or {}).get(SAMPLE_KEY)]

    # -- match tasks to samples ---------------------------------------------------------------
    in_view = set(samples.values("id"))
    in_dataset = set(dataset.values("id")) if len(in_view) != len(dataset) else in_view
    gone = [(t["data"][SAMPLE_KEY], t["id"]) for t in tasks
            if t["data"][SAMPLE_KEY] not in in_dataset]
    if gone and not skip_missing:
        listed = ", ".join(f"{s} (task {t})" for s, t in gone[:5])
        raise LabelStudioError(f"{len(gone)} task(s) belong to samples deleted from the dataset: "
                               f"{listed}; pass skip_missing=True to load the others")
    tasks = [t for t in tasks if t["data"][SAMPLE_KEY] in in_view]
    by_sample = {}
    for t in sorted(tasks, key=lambda t: int(t["id"])):
        by_sample.setdefault(t["data"][SAMPLE_KEY], t)  # a sample's first task (re-sends update)
    view = dataset.select(list(by_sample))
    pre_labels = dict(zip(view.values("id"), view.values(label_field)))

    report = LoadReport(label_field=label_field, out_field=out_field, project_id=pid)
    out_labels, totals = {}, {}
    total = len(by_sample)
    for n, (sid, task) in enumerate(by_sample.items(), 1):
        ann = _latest_submitted(task)
        reviewed = ann is not None
        report.num_reviewed += reviewed
        report.num_unreviewed += not reviewed
        what = f"task {task['id']} (sample {sid})"
        pre_label = pre_labels.get(sid)
        if not reviewed and not include_unreviewed:
            report.per_sample[sid] = {"task_id": int(task["id"]), "reviewed": False,
                                      "loaded": False}
            continue
        pre = _read_mask(pre_label, f"sample {sid}") if pre_label is not None else None
        if reviewed:
            result = ann.get("result") or []
        else:
            preds = task.get("predictions") or []
            result = (preds[-1].get("result") if preds else None) or []
        shape = pre.shape if pre is not None else _result_shape(result, what)
        mask = regions_to_mask(result, shape, values, fill, what, dtype)
        row = {"task_id": int(task["id"]), "reviewed": reviewed, "loaded": True,
               "annotation_id": int(ann["id"]) if reviewed else None}
        if pre is not None:
            eff = correction_effort(pre, mask, names,
                                    ignore_value=fill if unlabelled == "ignore" else None)
            row.update({k: eff[k] for k in ("pixels_changed", "pixels_compared",
                                            "share_kept", "mIoU")})
            row["per_class"] = eff["per_class"]
            if reviewed:
                for name, c in eff["per_class"].items():
                    acc = totals.setdefault(name, dict.fromkeys(
                        ("pre_pixels", "corrected_pixels", "kept_pixels", "union_pixels"), 0))
                    for k in acc:
                        acc[k] += c[k]
                report.pixels_changed += eff["pixels_changed"]
                report.pixels_compared += eff["pixels_compared"]
        report.per_sample[sid] = row
        out_labels[sid] = (mask, row)
        if progress is not None:
            progress(n, total, f"{n}/{total} tasks read")
    for name, acc in totals.items():
        acc["iou"] = acc["kept_pixels"] / acc["union_pixels"] if acc["union_pixels"] else None
        acc["share_kept"] = acc["kept_pixels"] / acc["pre_pixels"] if acc["pre_pixels"] \
            else None
    report.per_class = totals
    if report.pixels_compared:
        report.share_kept = 1 - report.pixels_changed / report.pixels_compared
    ious = [a["iou"] for a in totals.values() if a["iou"] is not None]
    report.mIoU = float(np.mean(ious)) if ious else None
    report.num_loaded = len(out_labels)

    # -- writes (everything above succeeded) --------------------------------------------------
    mask_dir = None
    if output_dir:
        mask_dir = os.path.join(os.path.abspath(output_dir), out_field)
        try:
            os.makedirs(mask_dir, exist_ok=True)
        except OSError as e:
            raise LabelStudioError(f"cannot write masks to '{mask_dir}': {e}") from None
    labels = {}
    for sid, (mask, row) in out_labels.items():
        attrs = {"reviewed": row["reviewed"], "labelstudio_task_id": row["task_id"]}
        if row.get("annotation_id") is not None:
            attrs["labelstudio_annotation_id"] = row["annotation_id"]
        if "pixels_changed" in row:
            attrs.update(pixels_changed=row["pixels_changed"], share_kept=row["share_kept"],
                         iou_vs_prelabel=row["mIoU"])
        if mask_dir:
            from PIL import Image

            path = os.path.join(mask_dir, f"{sid}.png")
            Image.fromarray(mask).save(path)
            labels[sid] = fo.Segmentation(mask_path=path, **attrs)
        else:
            labels[sid] = fo.Segmentation(mask=mask, **attrs)
    if out_field in schema and overwrite:
        dataset.clear_sample_field(out_field)
    if out_field not in schema:
        import fiftyone.core.fields as fof

        dataset.add_sample_field(out_field, fof.EmbeddedDocumentField,
                                 embedded_doc_type=fo.Segmentation)
    mt = dict(dataset.mask_targets or {})
    mt[out_field] = dict(names)
    dataset.mask_targets = mt
    dataset.save()
    if labels:
        dataset.set_values(out_field, labels, key_field="id")
    reviewed_ids = [sid for sid, (_, row) in out_labels.items()
                    if row["reviewed"] and "pixels_changed" in row]
    if reviewed_ids:
        run_evaluation(dataset.select(reviewed_ids), label_field, out_field, effort_key,
                       ignore_index=fill if unlabelled == "ignore" else None,
                       background="class", overwrite=True,
                       effort=_effort_info(report, unlabelled, fill, client.url))
        report.effort_key = effort_key
    elif effort_key in dataset.list_evaluations():
        # the field was replaced (overwrite) and nothing in it is reviewed: a stale effort
        # evaluation would describe masks that are gone
        dataset.delete_evaluation(effort_key)
    report.seconds = round(time.time() - t0, 3)
    return report


def _check_effort_key(dataset, key: str, overwrite: bool) -> None:
    """The effort evaluation's key is usable: a valid name, not taken (unless ``overwrite``),
    its per-sample fields not taken by something that is not that evaluation."""
    if not key or not _FIELD_RE.match(key):
        raise LabelStudioError(f"effort evaluation key {key!r} must start with a letter and "
                               "contain only letters, digits and _")
    existing = key in dataset.list_evaluations()
    if existing and not overwrite:
        raise LabelStudioError(f"an evaluation with key '{key}' exists; choose another effort "
                               "key or allow overwriting")
    if not existing:
        schema = dataset.get_field_schema()
        taken = [f for f in (f"{key}_miou", f"{key}_acc") if f in schema]
        if taken:
            raise LabelStudioError(f"sample field(s) {taken} exist and belong to no evaluation; "
                                   "choose another effort key")


def _result_shape(result, what: str) -> tuple[int, int]:
    for r in result or []:
        if "original_height" in r and "original_width" in r:
            return int(r["original_height"]), int(r["original_width"])
    raise LabelStudioError(f"{what}: no pre-label and no region to tell the image size")


def _effort_info(report: LoadReport, unlabelled: str, fill: int, url: str) -> dict:
    """What the effort evaluation keeps in its config: the totals and per-class figures of
    ``report`` and how the corrections were read (per-sample numbers are on the labels and in
    the evaluation's per-sample fields)."""
    d = report.to_dict()
    d.pop("per_sample")
    for volatile in ("effort_key", "seconds"):
        d.pop(volatile)
    d.update(url=url, unlabelled=unlabelled, fill_value=fill)
    return d


# ---------------------------------------------------------------------------------------------
# command line: tfovss-labelstudio send|load (python -m tfovss_fiftyone.labelstudio)
# ---------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``tfovss-labelstudio send DATASET FIELD`` / ``load DATASET FIELD OUT``; the API key comes
    from ``$LABEL_STUDIO_API_KEY`` only (never a command-line argument, which ``ps`` shows)."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="tfovss-labelstudio",
                                 description="Label Studio round trip of a Segmentation field")
    sub = ap.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("send", help="send a field's pre-labels as predictions")
    s.add_argument("dataset")
    s.add_argument("field")
    s.add_argument("--project", help="project title (default: 'tfovss <dataset> <field>')")
    s.add_argument("--image-route", choices=IMAGE_ROUTES, default="upload")
    s.add_argument("--document-root", help="for --image-route local-files")
    s.add_argument("--batch-size", type=int, default=20)
    ld = sub.add_parser("load", help="load the submitted corrections into a new field")
    ld.add_argument("dataset")
    ld.add_argument("field", help="the field that was sent")
    ld.add_argument("out_field")
    ld.add_argument("--unlabelled", choices=UNLABELLED, default="background")
    ld.add_argument("--ignore-value", type=int, default=255)
    ld.add_argument("--include-unreviewed", action="store_true")
    ld.add_argument("--skip-missing", action="store_true")
    ld.add_argument("--overwrite", action="store_true")
    ld.add_argument("--output-dir")
    for p in (s, ld):
        p.add_argument("--url", help=f"Label Studio URL (default: ${URL_ENV})")
    args = ap.parse_args(argv)
    import fiftyone as fo

    try:
        if not fo.dataset_exists(args.dataset):
            raise LabelStudioError(f"dataset '{args.dataset}' does not exist")
        ds = fo.load_dataset(args.dataset)
        if args.verb == "send":
            out = send_for_review(ds, args.field, url=args.url, project=args.project,
                                  image_route=args.image_route,
                                  document_root=args.document_root,
                                  batch_size=args.batch_size).to_dict()
            out.pop("tasks")
        else:
            out = load_corrections(ds, args.field, args.out_field, url=args.url,
                                   unlabelled=args.unlabelled, ignore_value=args.ignore_value,
                                   include_unreviewed=args.include_unreviewed,
                                   skip_missing=args.skip_missing, overwrite=args.overwrite,
                                   output_dir=args.output_dir).to_dict()
            out.pop("per_sample")
    except LabelStudioError as e:
        print(f"tfovss-labelstudio: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
