"""``tfovss benchmark --datasets fiftyone:NAME --fiftyone``: the core finds the FiftyOne side
through the ``tfovss.benchmark_sources`` entry point (never by import path), benchmarks a
FiftyOne dataset with the tiny synthetic CLIP and stores the run back as an evaluation whose
mIoU is the benchmark table's."""
from __future__ import annotations

import re

from support.fo import needs_core


def test_source_is_found_through_the_entry_point():
    import tfovss_fiftyone.benchmarks
    from tfovss_core.cli.benchmark import benchmark_source

    assert benchmark_source("fiftyone") is tfovss_fiftyone.benchmarks


@needs_core
def test_benchmark_cli_on_a_fiftyone_dataset_stores_the_run(voc_ds, tmp_path, capsys):
    from tfovss_core.cli import benchmark as bench_cli
    from tfovss_fiftyone.evaluation import OVSSEvaluationResults

    rc = bench_cli.main(["--methods", "sclip", "--datasets", f"fiftyone:{voc_ds.name}",
                         "--pretrained", "tiny:seed0", "--limit", "2", "--out", str(tmp_path),
                         "--fiftyone", "--no-progress", "--set", "templates=single"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    line = next(x for x in out.out.splitlines() if x.startswith("FiftyOne: dataset"))
    assert f"'{voc_ds.name}'" in line and "SYNTHETIC WEIGHTS" in line
    stored, table = (float(x) for x in re.search(
        r"mIoU (\d+\.\d+) \(benchmark table (\d+\.\d+)\)", line).groups())
    assert stored == table
    voc_ds.reload()
    key = re.search(r"evaluation '(\w+)'", line).group(1)
    res = voc_ds.load_evaluation_results(key)
    assert isinstance(res, OVSSEvaluationResults)
    assert round(100 * res.mIoU, 2) == stored
    assert voc_ds.info["tfovss_runs"][key]["method"] == "sclip"
