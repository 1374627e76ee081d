"""Parameters of knowledge distillation: a student learns to imitate a teacher's token
distributions on training text, for a number of steps or a wall-clock budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from app.recipes.common import MethodParams, check_patterns
from app.recipes.cost import StageCost
from app.recipes.pruning import StructuredParams
from app.sources import BuiltinDataset, DatasetSource, ModelSource


class PreviousStudent(MethodParams):
    """The model the earlier stages of the recipe produced (pruned, factored, sparse): the
    distillation recovers what they cost."""

    kind: Literal["previous"] = "previous"


class DerivedStudent(MethodParams):
    """A smaller model cut from the teacher and initialised with its weights: decoder layers
    dropped by block input/output similarity and/or MLP channels removed, ranked on the job's
    calibration text (the same code as the `structured` method)."""

    kind: Literal["derived"] = "derived"
    drop_layers: int = Field(default=0, ge=0, le=512, description="Decoder layers removed")
    mlp_channels: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of MLP intermediate channels removed"
    )

    @model_validator(mode="after")
    def _smaller(self) -> DerivedStudent:
        if not (self.drop_layers or self.mlp_channels):
            raise ValueError("set drop_layers and/or mlp_channels")
        return self

    @property
    def structured(self) -> StructuredParams:
        """The same cut as a `structured` stage (one implementation of both)."""
        return StructuredParams(layers=self.drop_layers, mlp_channels=self.mlp_channels)


class ModelStudent(MethodParams):
    """Another model that shares the teacher's tokenizer (its vocabulary is checked)."""

    kind: Literal["model"] = "model"
    model: ModelSource


StudentSpec = Annotated[
    PreviousStudent | DerivedStudent | ModelStudent, Field(discriminator="kind")
]


class LoraSpec(MethodParams):
    """Train low-rank adapters (PEFT LoRA) instead of every weight, merged into the student at
    the end: the optimizer state shrinks from 2x the model to 2x the adapters."""

    r: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module name suffixes (or `re:` patterns) that get adapters",
    )

    @model_validator(mode="after")
    def _patterns(self) -> LoraSpec:
        check_patterns(self.targets)
        return self


class DistillParams(MethodParams):
    """Knowledge distillation: the student is trained on the teacher's token distributions.

    Losses: `forward_kl` (KL(teacher || student), standard KD: the student covers every mode of
    the teacher), `reverse_kl` (KL(student || teacher), MiniLLM: mode-seeking, for students too
    small to cover them all), `gkd` (generalized Jensen-Shannon divergence with interpolation
    `beta`, computed on continuations the student samples itself for a `lmbda` share of the
    batches: on-policy, so the student learns from its own mistakes). All three are TRL's
    generalized JSD at beta 0, 1 and `beta`. `lm_loss_weight` mixes in the plain next-token
    loss; `hidden_loss_weight` adds matching of normalised hidden states (teacher layers mapped
    onto the student's evenly when depths differ; same hidden size only).

    The teacher is the job's input model unless `teacher` names another. The student is the
    previous stages' output (default), a smaller model derived from the teacher, or another
    model with the same tokenizer. Training text is the calibration share of `dataset`
    (disjoint from the evaluation text), packed to `seq_length`.

    The student's state (weights, optimizer, schedule, RNG, data position) is checkpointed to
    the object store every `checkpoint_every` steps and on cancellation; a retried job resumes
    from the last checkpoint.

    Example stages: `[{"method": "structured", "params": {"layers": 6}},
    {"method": "distill", "params": {"max_steps": 48, "max_seconds": 600}}]`.

    After a weight-only integer quantization stage (rtn, gptq, autoround, awq, ternary) the
    distillation is quantization-aware: the student's forward uses its weights fake-quantized on
    the stage's grid, gradients pass the rounding straight through to the float weights behind
    them (and to the scales with `learn_scales`), and the saved artifact is the same
    compressed-tensors checkpoint holding the trained integers. This is how ternary and 2/3-bit
    models recover. Example: `[{"method": "gptq", "params": {"bits": 3, "group_size": 64}},
    {"method": "distill", "params": {"max_seconds": 1800, "learning_rate": 1e-4}}]`.
    """

    student: StudentSpec = Field(default_factory=PreviousStudent)
    teacher: ModelSource | None = Field(default=None, description="null: the job's input model")
    loss: Literal["forward_kl", "reverse_kl", "gkd"] = "forward_kl"
    beta: float = Field(
        default=0.5, gt=0, lt=1, description="gkd: JSD interpolation (0 = forward, 1 = reverse)"
    )
    lmbda: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="gkd: share of batches on student-generated continuations",
    )
    prompt_tokens: int = Field(
        default=64, ge=1, le=8192, description="gkd: prefix the student continues from"
    )
    temperature: float = Field(default=1.0, gt=0, le=20)
    lm_loss_weight: float = Field(
        default=0.0, ge=0, le=1, description="Weight of the next-token loss (1 - it: the KD loss)"
    )
    hidden_loss_weight: float = Field(
        default=0.0, ge=0, le=100, description="Weight of hidden-state matching (0: off)"
    )
    dataset: DatasetSource = Field(default_factory=BuiltinDataset)
    generated_sequences: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Sequences of seq_length tokens the teacher writes itself, added to the "
        "dataset's (LLM-QAT's data-free recipe: a random first token, greedy for 3 tokens, "
        "then sampled): the student also learns the teacher outside the dataset's domain",
    )
    seq_length: int = Field(default=256, ge=16, le=8192)
    batch_size: int = Field(default=4, ge=1, le=512)
    grad_accum: int = Field(default=1, ge=1, le=1024, description="Micro-batches per step")
    max_steps: int = Field(default=100, ge=1, le=1_000_000, description="Optimizer steps")
    max_seconds: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="Wall-clock training budget"
    )
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant",
        description="After warm-up; linear and cosine decay to 0 over whichever budget binds "
        "first (max_steps or max_seconds)",
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps from 0")
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        default="auto", description="auto: bf16 autocast on GPU, float32 on CPU"
    )
    lora: LoraSpec | None = None
    learn_scales: bool = Field(
        default=False,
        description="After a quantization stage (quantization-aware distillation): also "
        "train each group's scale, not only the weights behind the integers",
    )
    checkpoint_every: int = Field(default=50, ge=1, le=1_000_000)
    eval_tokens: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Held-out tokens for the teacher / student-before / student-after "
        "perplexities in the stage notes (0: skip)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistillParams:
        if self.loss == "gkd" and self.lmbda > 0 and self.prompt_tokens >= self.seq_length:
            raise ValueError("prompt_tokens must be below seq_length (the student continues it)")
        if self.warmup_steps >= self.max_steps and self.warmup_steps:
            raise ValueError("warmup_steps must be below max_steps")
        return self

    @property
    def beta_for_loss(self) -> float:
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.loss, self.beta)

    def cost(self) -> StageCost:
        # Calibration only to choose what a derived student drops; training reads `dataset`.
        micro = self.batch_size * self.seq_length
        return StageCost(
            calibration_passes=1.0 if isinstance(self.student, DerivedStudent) else 0.0,
            training_tokens=self.max_steps * self.grad_accum * micro,
            generated_tokens=self.generated_sequences * self.seq_length,
            micro_batch_tokens=micro,
            max_seconds=self.max_seconds,
        )
