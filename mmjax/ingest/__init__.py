"""`python -m mmjax.ingest`: corpora as they ship -> a TFDS directory of ArrayRecord shards.

Training reads random-access ArrayRecord through TFDS (`data.name="tfds"`, `data.tfds.dir=OUT`,
mmjax/data/datasets/tfds_dataset.py) so Grain can shuffle and resume exactly; corpora ship as
webdataset tars, CSVs of paths, class folders, audio + label CSVs and point-cloud files. This
package converts once, verifying every member (broken files are skipped and reported, never met
mid-training), in parallel, resumably, and without TensorFlow.

  cli.py      command line, planning and the local process pool
  sources.py  per kind: the shard plan, and reading a shard's members (tars streamed in memory)
  checks.py   verifying a member (image / audio decode, point parsing, labels) -> value or Skip
  spec.py     the picklable ShardTask and the features each kind stores
  writer.py   convert_shard (one shard, atomic, resumable), TFDS metadata and the skip report
  beam.py     the same shards on Apache Beam (optional dependency)
"""
