"""The same conversion as an Apache Beam pipeline, for corpora too big for one machine.

Each element is a `ShardTask`; the pipeline is `Create(tasks) | Reshuffle | Map(convert_shard)`,
so a worker runs exactly the function the local pool runs, and the driver then writes the TFDS
metadata from the shard results (`writer.finalize`). Finished shards are skipped on a rerun, and
a retried bundle rewrites a shard under a temporary name, so Beam's retries are safe.

apache_beam is optional (`pip install apache-beam`, the `beam` extra) and imported only here.

Locally (tests; the DirectRunner, one process):
    python -m mmjax.ingest webdataset 'shards/{00000..00009}.tar' --out data/cc3m --runner beam \\
        --beam-options "--runner=DirectRunner"
Distributed: inputs and --out are opened as file paths, so every worker must see them at the same
path (NFS, Filestore, a GCS FUSE mount such as /gcs/BUCKET), and the workers need mmjax installed
(a container image or --setup_file). For example on Dataflow:
    python -m mmjax.ingest webdataset '/gcs/BUCKET/laion/{00000..41455}.tar' --out /gcs/BUCKET/laion_ar \\
        --runner beam --beam-options "--runner=DataflowRunner --project=PROJECT --region=REGION \\
        --temp_location=gs://BUCKET/tmp --sdk_container_image=IMAGE_WITH_MMJAX --max_num_workers=64"
(Flink / Spark: `--runner=FlinkRunner --flink_master=HOST:8081 --environment_type=PROCESS ...`.)
"""
from __future__ import annotations

import shlex

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmjax.ingest import writer
from mmjax.ingest.spec import ShardTask


def run_beam(tasks: list[ShardTask], out: str, pipeline_options: str | PipelineOptions = "") -> dict:
    """Converts `tasks` on Beam, then finalises the metadata; returns the split's report."""
    if not isinstance(pipeline_options, PipelineOptions):
        pipeline_options = PipelineOptions(shlex.split(pipeline_options or ""))
    todo = writer.pending(tasks)
    if todo:
        with beam.Pipeline(options=pipeline_options) as pipeline:
            _ = (pipeline
                 | "Shards" >> beam.Create(todo)
                 | "Spread" >> beam.Reshuffle()
                 | "Convert" >> beam.Map(writer.convert_shard))
    return writer.finalize(out, tasks[0].split)
