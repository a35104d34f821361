"""Small blocks the configs are composed from; no config calls another config's `get_config`.

Every file directly in configs/ and configs/pod/ is a recipe: `get_config(arg)` parses its
variant string (mmjax.config_utils.parse_variant), then builds, top to bottom,

    c = trainer.cpu_run(...) | pod.run(...)    # seed, steps, batch, logging, mesh, checkpoints
    c.data = data_config(name, modalities)     # mmjax.data.config (+ the recipe's fields)
    c.model = contrastive.model(...) | masked.model(...)   # towers.vit / text / audio / points
    c.objective = ...
    c.optim = trainer.adamw(...)
    c.eval = evals.cpu_schedule(...) | pod.eval_schedule(...)   # when, batch size, aliases
    c.evals = evals.entries(evals.zeroshot(...), evals.retrieval(...), evals.probes(...))

Modules: trainer (run, optimiser, mesh, sharding), towers (transformer sizes, encoder
blocks, decoders), contrastive (contrastive model, pairwise losses, weighted sums), masked
(masked models, MAE loss and optimiser), evals (eval schedule, evaluator entries), digits
(the embedded datasets' CPU sizes, AV-digits data, their towers), pod (the pod layout and the
`data`/`size` variants of configs/pod/).
"""
