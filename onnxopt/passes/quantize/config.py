"""The ``quantize`` pass's configuration (:class:`QuantizeConfig`); the pass's docstring states what each does."""

from __future__ import annotations

import dataclasses
from typing import Literal

from onnxopt.passes._config import validate_literals
from onnxopt.passes._weights import check_pattern

#: Fewer samples than this leave QAT too few to train on (and the qat pass's held-back tenth too few to pick by).
QAT_MIN_SAMPLES = 64


def _option(default, help: str):  # "help": the metadata key every config's help is read from
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    calibration: Literal["minmax", "percentile", "entropy", "mse", "auto"] = _option(
        "minmax", "how activation ranges are chosen; auto: per tensor, the method whose error its readers feel least"
    )
    percentile: float = _option(99.99, "calibration=percentile: the quantile kept")
    activations: Literal["uint8", "int8", "int16"] = _option("uint8", "uint8 asymmetric, int8 symmetric, int16 = A16W8")
    weights_only: bool = _option(False, "int8 weight storage only: float compute, a 4x smaller file")
    target: Literal["auto", "vnni", "avx2", "arm", "gpu"] = _option(
        "auto", "the CPU the integer kernels are rounded for (7-bit weights without VNNI); auto: this machine's"
    )
    samples: int = _option(256, "calibration samples of --data")
    exclude: str = _option("", "regex on node names kept in float")
    fallback: Literal["none", "profile"] = _option("none", "profile: keep float compute where int8 runs slower")
    max_drop: float | None = _option(None, "accuracy budget (onnxopt.optimizer.quality)")
    max_db_loss: float | None = _option(
        None, "or: at most this many dB of output SNR (worst output) lost beyond the weights-only int8 model"
    )
    max_reading_drop: float | None = _option(
        None,
        "or, where the run has the user's --data and its outputs read as a task (top-1, sequence, detection; "
        "--metric): at most this much of that reading lost beyond the weights-only int8 model; max_db_loss, when "
        "given too, judges the rest",
    )
    reading_confidence: float = _option(
        0.95,
        "max_reading_drop judges the drop's one-sided upper bound at this confidence (a paired bootstrap over the "
        "samples scored), not its point estimate; 0.5 is about the point estimate",
    )
    eval_samples: int = _option(
        256, "samples the budgets score on (max_db_loss, max_reading_drop: after calibration's, when --data has them)"
    )
    budget_order: Literal["speed", "error"] = _option(
        "speed",
        "which layers a budget keeps float first: speed = the most error per µs of int8 speed given up (with "
        "fallback=profile; else by error), error = the most error",
    )
    bias_correct: bool = _option(False, "fold each layer's mean weight-rounding error into its bias")
    profile_batch: int | None = _option(None, "the batch fallback=profile times (default: the run's --batch, else 1)")
    min_gain: float = _option(
        0.03,
        "fallback=profile keeps int8 compute only when it runs at most (1 - min_gain) x float's latency: else float "
        "compute with int8 weight storage (float's speed, less error) serves better; a near-tie is noise",
    )
    rounding: Literal["nearest", "gptq"] = _option("nearest", "gptq: weight levels learned on the calibration data")
    float_weights: Literal["int8", "float"] = _option("int8", "how nodes that keep float compute store weights")
    per_channel: bool = _option(
        True,
        "false: one scale per weight tensor of int8 compute (what some accelerators take; with rounding=nearest, no "
        "bias_correct); weights stored for float compute, and the max_db_loss yardstick, stay per channel",
    )
    qat: Literal["off", "auto"] = _option(
        "off",
        "auto: when the int8 compute left after the speed search (if any) misses the budget, fine-tune it on the "
        "float model's outputs first (quantization-aware; needs --data and the tf extra; a detector's anchor "
        "outputs by the detection loss); the budget judges that",
    )
    qat_epochs: int = _option(3, "qat=auto: passes over the fine-tuning samples")
    qat_samples: int = _option(512, "qat=auto: samples of --data fine-tuned on (a seeded tenth held back)")
    qat_time_budget: float = _option(900.0, "qat=auto: seconds of fine-tuning at most")

    def __post_init__(self) -> None:
        validate_literals(self)
        if not 50 < self.percentile <= 100:
            raise ValueError("percentile must be in (50, 100]")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError("max_drop must be in [0, 1)")
        if self.max_db_loss is not None and not 0 <= self.max_db_loss <= 100:
            raise ValueError("max_db_loss must be in [0, 100] dB")
        if self.max_reading_drop is not None and not 0 <= self.max_reading_drop < 1:
            raise ValueError("max_reading_drop must be in [0, 1)")
        if not 0 < self.reading_confidence < 1:
            raise ValueError("reading_confidence must be in (0, 1)")
        if self.max_drop is not None and (self.max_db_loss is not None or self.max_reading_drop is not None):
            raise ValueError("give max_drop, or max_db_loss and/or max_reading_drop, not both kinds")
        if self.samples < 1 or self.eval_samples < 1 or (self.profile_batch is not None and self.profile_batch < 1):
            raise ValueError("samples, eval_samples and profile_batch must be positive")
        if not -1 < self.min_gain < 1:
            raise ValueError("min_gain must be in (-1, 1)")
        check_pattern(self.exclude)
        if not self.per_channel and (self.rounding != "nearest" or self.bias_correct):
            raise ValueError("per_channel=false takes rounding=nearest and bias_correct=false (both are per channel)")
        if self.qat_epochs < 1 or self.qat_samples < QAT_MIN_SAMPLES or self.qat_time_budget <= 0:
            raise ValueError(f"qat_epochs and qat_time_budget must be positive, qat_samples at least {QAT_MIN_SAMPLES}")

    @property
    def budgeted(self) -> bool:
        """Whether an accuracy budget (``max_drop``, ``max_db_loss`` or ``max_reading_drop``; 0 is a budget too)
        is set."""
        return self.max_drop is not None or self.beyond_weights_only

    @property
    def beyond_weights_only(self) -> bool:
        """Whether the budget's yardstick is the weights-only int8 model (``max_db_loss``, ``max_reading_drop``)
        rather than the float original (``max_drop``)."""
        return self.max_db_loss is not None or self.max_reading_drop is not None
