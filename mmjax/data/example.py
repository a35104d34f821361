"""One validated record -> the model's inputs for every configured modality.

`ExampleTransform.from_config(data_cfg, tokenizer, fields, train=..., where=...)` is a pure
function of (record, rng): Grain calls it as a `RandomMap` in training (rng seeded per stream
position, so resumed runs see the same augmentations) and with an rng seeded by the example
index in evaluation (no augmentation, but point sampling still needs randomness). Each
configured modality's `Modality` (mmjax.data.modalities) decodes and augments its stored field
(`fields[m]`, which the dataset declares).

Output per example (only the configured modalities; shapes are each modality's `specs()`):
  <m> (and <m>_mask for modalities with position validity)   label int32
  <m>_view2 (and <m>_view2_mask)  for m in data.second_view, in training only: a second,
      independently augmented view of m (SimCLR / TCL); it shares m's presence and augments with
      its own generator, seeded by a draw from the example's (a pure function of the stream
      position, like the first)
  present {m: bool}  False where m was dropped (modality dropout) or bad
  flags {"text_truncated": bool, "bad_<m>": bool}  counted in the metrics

Bad modality input (zero-length or non-finite audio, a blank digit that gives no points, ...):
with data.on_bad_input="error" a BadRecordError naming the example and field; with "drop" the
modality is marked absent for that example, its input replaced by the modality's placeholder,
and `flags["bad_<m>"]` set so the trainer counts it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.batch_keys import rename_view
from mmjax.data.modalities import MODALITIES, Modality
from mmjax.data.transforms import BadInput, BadRecordError, example_name, field_name

ON_BAD_INPUT = ("error", "drop")


def bind_modalities(data_cfg, tokenizer, *, train: bool) -> dict[str, Modality]:
    """{m: the registered Modality of m, bound to data_cfg} for each of data.modalities."""
    return {m: MODALITIES.get(m, "data.modalities entry")(data_cfg, tokenizer, train=train)
            for m in data_cfg.modalities}


@dataclasses.dataclass
class ExampleTransform:
    modalities: dict[str, Modality]
    fields: dict[str, str]  # modality -> the record field it reads
    train: bool
    drop_prob: dict[str, float]
    on_bad_input: str
    where: str  # "dataset/split", for error messages
    second_view: tuple[str, ...] = ()  # modalities given a second augmented view in training

    @classmethod
    def from_config(cls, data_cfg, tokenizer, fields: dict[str, str], *, train: bool,
                    where: str) -> "ExampleTransform":
        if data_cfg.on_bad_input not in ON_BAD_INPUT:
            raise ValueError(f"data.on_bad_input={data_cfg.on_bad_input!r}; valid: {list(ON_BAD_INPUT)}")
        drop = dict(data_cfg.drop_prob)
        if unknown := set(drop) - set(MODALITIES):
            raise ValueError(f"data.drop_prob has unknown modalities {sorted(unknown)}; valid: {MODALITIES.names()}")
        second_view = tuple(data_cfg.get("second_view", ()))
        if set(second_view) - set(data_cfg.modalities):
            raise ValueError(f"data.second_view={second_view} names modalities outside data.modalities="
                             f"{tuple(data_cfg.modalities)}")
        return cls(bind_modalities(data_cfg, tokenizer, train=train), dict(fields), train, drop,
                   data_cfg.on_bad_input, where, second_view=second_view)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        out = {"label": np.int32(record["label"]), "present": {}, "flags": {}}
        # The second views' generator: seeded by the example's own stream (so a resumed run
        # redraws the same views) and drawn from only when there are second views.
        view_rng = np.random.default_rng(rng.integers(2**63, size=2)) if self.train and self.second_view else None
        for m, modality in self.modalities.items():
            value = record[self.fields[m]]
            try:
                out |= modality(value, rng, out["flags"])
                present = True
            except BadInput as e:
                if self.on_bad_input == "error":
                    raise BadRecordError(f"{self.where} {example_name(record['_index'], record)}: field "
                                         f"{field_name(self.fields[m], m)}: {e}") from e
                out |= modality.placeholder()
                out["flags"][f"bad_{m}"] = True
                present = False
            if self.on_bad_input == "drop":
                out["flags"].setdefault(f"bad_{m}", False)
            if present and self.train and rng.random() < self.drop_prob.get(m, 0.0):
                out |= modality.placeholder()
                present = False
            out["present"][m] = np.bool_(present)
            if view_rng is not None and m in self.second_view:
                view = modality(value, view_rng, {}) if present else modality.placeholder()
                out |= rename_view(view, m)  # audio_mask -> audio_view2_mask
        return out
