"""Structured-config schema: one dataclass per config group.

Hydra merges every YAML file of `conf/` into these dataclasses, so an unknown key or a value of the wrong type
fails at compose time with the key's full name. Range and choice checks live in ``__post_init__``; they run
when :func:`vsd.config.to_config` turns the composed DictConfig into these objects (also at compose time in
``run.py``'s pre-flight), and raise :class:`vsd.errors.ConfigError`, whose message starts with the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from vsd.errors import ConfigError


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {list(choices)}, got {value!r}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _unit(key: str, value: float, open_low: bool = False) -> None:
    lo_ok = value > 0 if open_low else value >= 0
    if not (lo_ok and value <= 1):
        raise ConfigError(key, f"must lie in {'(0, 1]' if open_low else '[0, 1]'}, got {value}")


# --------------------------------------------------------------------------------------------- model
@dataclass
class RandomModelConfig:
    """Geometry of a randomly initialised llama (model.source=random; tests only)."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    init_seed: int = 0


@dataclass
class ArchitectureConfig:
    """A target architecture by its HF config fields (model.random_init=true builds it with random weights,
    without weights or the hub: the costs of a large target are real, its outputs are not). conf/model/
    llama31_8b.yaml and qwen3_8b.yaml give the published models' config.json values."""

    model_type: str = "llama"  # transformers' config class: llama | qwen3 | mistral | qwen2 ...
    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int | None = None  # None: hidden_size / num_heads
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    # transformers' rope_parameters: rope_type (default | llama3 | yarn ...), rope_theta and the type's fields
    rope: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    tie_word_embeddings: bool = False
    init_seed: int = 0

    def __post_init__(self) -> None:
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            _positive(f"model.architecture.{key}", getattr(self, key))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("model.architecture.num_kv_heads", "must divide model.architecture.num_heads")
        if "rope_type" not in self.rope or "rope_theta" not in self.rope:
            raise ConfigError("model.architecture.rope", "needs rope_type and rope_theta")


@dataclass
class DraftHeadConfig:
    """EAGLE-3 draft-head geometry. ``None`` means: derive from the target config."""

    vocab_size: int = 8192  # reduced draft vocab (most frequent target tokens in the training data)
    num_layers: int = 1
    intermediate_size: int | None = None  # None: the target's MLP width
    feature_layers: list[int] | None = None  # None: [2, L//2, L-3] (hidden states entering those layers)
    feature_norm: bool = True  # RMSNorm per feature block before fusion (this project's choice; EAGLE-3: off)
    base: str | None = None  # a draft shipped with vsd for this target (vsd/drafts/<base>): "shipped" in
    # train.init_from / draft.checkpoint names it

    def __post_init__(self) -> None:
        _positive("model.draft.vocab_size", self.vocab_size)
        _positive("model.draft.num_layers", self.num_layers)
        if self.feature_layers is not None and len(self.feature_layers) != 3:
            raise ConfigError(
                "model.draft.feature_layers", f"needs 3 layer indices, got {self.feature_layers}"
            )


@dataclass
class ModelConfig:
    name: str = MISSING  # short name: run names, cache keys
    source: str = MISSING  # gguf | hf | random
    hf_id: str | None = None  # hub id or local directory (source=hf); tokenizer source for gguf
    revision: str | None = None
    gguf_package: str | None = None  # installed Python package that ships the GGUF file
    gguf_file: str | None = None  # file name inside that package, or an absolute path
    tokenizer: str | None = None  # source=random: "bytes" (built-in byte-level tokenizer)
    random: RandomModelConfig = field(default_factory=RandomModelConfig)
    draft: DraftHeadConfig = field(default_factory=DraftHeadConfig)
    trust_remote_code: bool = False
    # true: build model.architecture with random weights and the byte tokenizer instead of loading the
    # weights (no files, no hub): benchmarks of a large target's costs (benchmarks/gpu_8b.py)
    random_init: bool = False
    architecture: ArchitectureConfig | None = None

    def __post_init__(self) -> None:
        _choice("model.source", self.source, ("gguf", "hf", "random"))
        if self.random_init and self.architecture is None:
            raise ConfigError("model.architecture", "required when model.random_init=true")
        if self.source == "hf" and not self.hf_id:
            raise ConfigError("model.hf_id", "required when model.source=hf")
        if self.source == "gguf" and not self.gguf_file:
            raise ConfigError("model.gguf_file", "required when model.source=gguf")
        if self.source == "random" and self.tokenizer != "bytes":
            raise ConfigError("model.tokenizer", "model.source=random needs tokenizer=bytes")


# ------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    source: str = MISSING  # sharegpt | jsonl | hf | tiny
    path: str | None = None  # jsonl/json file (source=jsonl) or local dataset dir (source=hf)
    hf_name: str | None = None  # HF dataset id or local path, for source=hf
    hf_split: str = "train"
    hf_messages_field: str = "conversations"
    num_prompts: int = 512  # prompts to self-distill
    max_prompt_tokens: int = 256  # longer prompts are skipped (counted in the data card)
    gen_max_new_tokens: int = 256  # self-distillation response length
    gen_temperature: float = 0.0  # 0 = greedy responses from the target
    responses: str = (
        "target"  # target: the target writes them (self-distillation) | source: the dataset's own
    )
    gen_batch_size: int = 16
    max_seq_len: int = 512  # prompt + response, tokens
    heldout_fraction: float = 0.02  # sequences kept out of training for held-out metrics
    seed: int = 0
    # first: the first user turn and its reply | all: whole conversations, every assistant turn trained on
    # (the target regenerates each reply in context under responses=target); docs/data.md
    turns: str = "first"
    chat_template: str | None = None  # None: the target tokenizer's | a named template (chatml, llama3,
    # vicuna: vsd/data/chat.py) | a Jinja file
    system_prompt: str | None = None  # replaces each conversation's system message; "" removes it

    def __post_init__(self) -> None:
        _choice("dataset.source", self.source, ("sharegpt", "jsonl", "hf", "tiny"))
        _choice("dataset.responses", self.responses, ("target", "source"))
        _choice("dataset.turns", self.turns, ("first", "all"))
        if self.source == "jsonl" and not self.path:
            raise ConfigError("dataset.path", "required when dataset.source=jsonl")
        if self.source == "hf" and not (self.hf_name or self.path):
            raise ConfigError("dataset.hf_name", "required when dataset.source=hf")
        _positive("dataset.num_prompts", self.num_prompts)
        _positive("dataset.max_prompt_tokens", self.max_prompt_tokens)
        _positive("dataset.gen_max_new_tokens", self.gen_max_new_tokens)
        _positive("dataset.gen_temperature", self.gen_temperature, allow_zero=True)
        _positive("dataset.gen_batch_size", self.gen_batch_size)
        _positive("dataset.max_seq_len", self.max_seq_len)
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError("dataset.heldout_fraction", f"must lie in [0, 1), got {self.heldout_fraction}")


# ---------------------------------------------------------------------------------------------- loss
@dataclass
class LossConfig:
    """L = eagle3_weight * L_EAGLE3 + vsd_weight * L_M + car_weight * CAR (see docs/method.md)."""

    name: str = MISSING  # eagle3 | vsd
    ttt_steps: int = 7  # training-time-test unroll
    step_decay: float = 0.8  # weight of unroll step k is step_decay**k
    # --- VSD (E-step / M-step); inert when vsd_weight == 0
    vsd_weight: float = 0.0
    num_samples: int = 4  # S Monte Carlo draft paths per anchor
    depth: int = 5  # D, tokens per sampled path
    anchors_per_seq: int = 8
    proposal_temperature: float = 1.0
    proposal_top_k: int = 0  # 0 = full draft vocab
    verify_temperature: float = 0.0  # 0 = greedy oracle, > 0 = stochastic acceptance min(1, p/q)
    oracle_filter: bool = True
    importance: bool = True
    log_weight_clip: float = 5.0
    arw: bool = True
    arw_target_ess: float = 0.5
    car: bool = False
    car_weight: float = 0.1
    # CAR's positions besides the teacher-forced ones: kept (the E-step's kept path tokens) | sampled (every
    # token of every sampled path, accepted or not: the ELBO's KL over the draft's own paths)
    car_paths: str = "kept"
    # weight of L_EAGLE3 once VSD is active (loss=vsd); 0: the M-step and CAR alone (the E-step still runs)
    eagle3_weight: float = 1.0
    vsd_start_step: int = 0
    require_warm_start: bool = True  # refuse VSD from an untrained draft (train.init_from unset)
    # --- where the E-step can differ from EAGLE-3 (docs/method.md, "Regimes")
    estep: str = "chain"  # chain: S i.i.d. draft paths per anchor | tree: decoding's greedy tree (T=0 oracle)
    tree_top_k: int = 8  # estep=tree: children per expanded node (decoding.top_k's role)
    tree_total_tokens: int = (
        32  # estep=tree: nodes kept per tree (decoding.total_tokens's role); depth=loss.depth
    )
    acceptance: str = "sample"  # T>0 oracle: sample (Bernoulli min(1, p/q)) | expected (prefix probabilities)
    vsd_norm: str = "anchor"  # L_M divisor: anchor (anchors with a kept path) | kept_token | response_token
    grad_cosine_every: int = 0  # log cos(grad L_M, grad L_EAGLE3) every N steps (2 extra backwards); 0 = off

    def __post_init__(self) -> None:
        _choice("loss.name", self.name, ("eagle3", "vsd"))
        _positive("loss.ttt_steps", self.ttt_steps)
        _unit("loss.step_decay", self.step_decay, open_low=True)
        _positive("loss.vsd_weight", self.vsd_weight, allow_zero=True)
        if self.num_samples < 1:
            raise ConfigError("loss.num_samples", f"must be >= 1, got {self.num_samples}")
        _positive("loss.depth", self.depth)
        _positive("loss.anchors_per_seq", self.anchors_per_seq)
        _positive("loss.proposal_temperature", self.proposal_temperature)
        _positive("loss.proposal_top_k", self.proposal_top_k, allow_zero=True)
        _positive("loss.verify_temperature", self.verify_temperature, allow_zero=True)
        _positive("loss.log_weight_clip", self.log_weight_clip)
        _unit("loss.arw_target_ess", self.arw_target_ess, open_low=True)
        _positive("loss.car_weight", self.car_weight, allow_zero=True)
        _positive("loss.vsd_start_step", self.vsd_start_step, allow_zero=True)
        _choice("loss.estep", self.estep, ("chain", "tree"))
        _positive("loss.tree_top_k", self.tree_top_k)
        _positive("loss.tree_total_tokens", self.tree_total_tokens)
        _choice("loss.acceptance", self.acceptance, ("sample", "expected"))
        _choice("loss.vsd_norm", self.vsd_norm, ("anchor", "kept_token", "response_token"))
        _positive("loss.grad_cosine_every", self.grad_cosine_every, allow_zero=True)
        _choice("loss.car_paths", self.car_paths, ("kept", "sampled"))
        _positive("loss.eagle3_weight", self.eagle3_weight, allow_zero=True)
        if self.car_paths == "sampled" and not (self.car and self.estep == "chain"):
            raise ConfigError(
                "loss.car_paths",
                "sampled needs loss.car=true and loss.estep=chain (the tree E-step has no samples)",
            )
        if self.eagle3_weight != 1.0 and self.name != "vsd":
            raise ConfigError("loss.eagle3_weight", "only loss=vsd weighs L_EAGLE3; loss=eagle3 needs 1")
        if self.eagle3_weight == 0 and not (self.vsd_weight > 0 or self.car):
            raise ConfigError(
                "loss.eagle3_weight", "0 needs loss.vsd_weight > 0 or loss.car=true (nothing to train)"
            )
        if self.eagle3_weight != 1.0 and self.vsd_start_step > 0:
            raise ConfigError(
                "loss.eagle3_weight", "applies once VSD is active: with loss.vsd_start_step > 0 it must be 1"
            )
        if self.estep == "tree" and self.verify_temperature > 0:
            raise ConfigError(
                "loss.estep", "tree verifies the greedy decoding tree: it needs loss.verify_temperature=0"
            )
        if self.name == "eagle3" and (self.vsd_weight > 0 or self.car):
            raise ConfigError("loss.name", "eagle3 needs vsd_weight=0 and car=false; use loss=vsd")


# ------------------------------------------------------------------------------------------ decoding
@dataclass
class DecodingConfig:
    mode: str = "tree"  # tree | chain
    drafter: str = "eagle3"  # eagle3 | ngram
    depth: int = 5
    top_k: int = 8
    total_tokens: int = 32  # tree nodes verified per target forward
    temperature: float = 0.0  # 0 = greedy (lossless argmax match)
    top_p: float = 1.0
    target_top_k: int = 0  # top-k filter on the target distribution at T > 0; 0 = off
    max_new_tokens: int = 128
    ngram_max: int = 3  # prompt-lookup drafter: longest n-gram matched
    ngram_min: int = 1
    # eagle3 at T=0: add prompt lookup's continuation (<= this many tokens) to the tree (docs/eval.md); the chain
    # and ngram presets and the pinned experiments set 0
    ngram_branch: int = 5
    capture: str = "none"  # none | cuda_graph (GPU; eager fallback without CUDA) | static (graph path, eager)
    max_len: int = 4096  # static KV slots per generation (capture != none): prompt + new tokens + one tree
    # capture != none, eagle3 drafter, no lookup branch: the whole speculative step (draft tree, verify,
    # acceptance, KV keep) as two captured graphs with one host read (vsd/decoding/captured_step.py); it drafts
    # one tree ahead, so max_len also needs depth + (depth - 1) * top_k draft slots past the generation;
    # false: the per-call graphs with host work between them
    captured_step: bool = True
    # the draft head's dtype while decoding: target (the target's: bf16 for real targets) | float32 | bfloat16 |
    # float16. A draft level is weight-bound on a CPU: bf16 halves its cost there (docs/bench_decoding.md)
    draft_dtype: str = "target"
    near_tie_eps: float = 0.25  # bf16: a T=0 divergence must start where the AR top-2 logit gap < eps
    # fixed: depth/top_k/total_tokens as given. auto: the eval stage measures this device's costs and the
    # draft's acceptance on val prompts (cached per device, target and draft) and picks the shape with the
    # best predicted bound (vsd/decoding/shape.py, docs/eval.md); only for model drafters (eagle3). The chain
    # and ngram presets and the paper, regime and strong experiments pin fixed
    shape: str = "auto"  # fixed | auto
    shape_max_depth: int = 8  # auto: deepest candidate (and the depth of the measuring tree)
    shape_max_top_k: int = 8  # auto: widest candidate top-k (and the measuring tree's)
    shape_max_nodes: int = 64  # auto: largest candidate node budget (and the measuring tree's)
    shape_prompts: int = 10  # auto: val prompts (first turns) decoded with the measuring tree
    shape_max_new: int = 64  # auto: new tokens per measuring prompt
    shape_remeasure: bool = False  # auto: ignore a cached measurement and measure again

    def __post_init__(self) -> None:
        _choice("decoding.mode", self.mode, ("tree", "chain"))
        _choice("decoding.shape", self.shape, ("fixed", "auto"))
        for key in (
            "shape_max_depth",
            "shape_max_top_k",
            "shape_max_nodes",
            "shape_prompts",
            "shape_max_new",
        ):
            _positive(f"decoding.{key}", getattr(self, key))
        _choice("decoding.drafter", self.drafter, ("eagle3", "ngram"))
        _choice("decoding.capture", self.capture, ("none", "cuda_graph", "static"))
        _choice("decoding.draft_dtype", self.draft_dtype, ("float32", "bfloat16", "float16", "target"))
        _positive("decoding.max_len", self.max_len)
        _positive("decoding.depth", self.depth)
        _positive("decoding.top_k", self.top_k)
        _positive("decoding.total_tokens", self.total_tokens)
        _positive("decoding.temperature", self.temperature, allow_zero=True)
        _unit("decoding.top_p", self.top_p, open_low=True)
        _positive("decoding.target_top_k", self.target_top_k, allow_zero=True)
        _positive("decoding.max_new_tokens", self.max_new_tokens)
        _positive("decoding.ngram_branch", self.ngram_branch, allow_zero=True)
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ConfigError("decoding.ngram_min", "needs 1 <= ngram_min <= ngram_max")


# ---------------------------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    suite: str = "specbench_style"  # specbench_style | mtbench | humaneval | math | qa | translation |
    # summarisation | file | smoke
    # user JSONL file (suite=file): {"id", "category"?, "turns": [...]} per line, or Spec-Bench's question file
    # as it is ({"question_id", "category", "turns"})
    prompts: str | None = None
    categories: list[str] = field(
        default_factory=lambda: ["mt_bench", "translation", "summarisation", "qa", "math", "coding"]
    )
    per_category: int = 10  # prompts sampled per category
    split: str = "test"  # test | val: disjoint prompt subsets (tune on val, report test)
    seed: int = 0
    warmup: int = 2  # untimed generate calls before timing
    ar_baseline: bool = True  # plain AR of the same prompts in the same process (needed for speedup)
    peers: list[str] = field(default_factory=lambda: ["hf_prompt_lookup"])  # hf_prompt_lookup
    max_turns: int = 2
    # decode: run AR, speculative decoding and peers (speed and acceptance); reference: T=0 acceptance only,
    # from the target's cached greedy continuations and every anchor's draft tree (vsd/evaluation/reference.py)
    method: str = "decode"
    # decode: also write Spec-Bench answer files, <run dir>/model_answer/<model_id>.jsonl (speculative) and
    # <model_id>-baseline.jsonl (plain AR), for Spec-Bench's own speed script (vsd/evaluation/specbench.py)
    answers: bool = False
    model_id: str | None = None  # the answers' model_id; None: <model.name>-vsd-<decoding.drafter>
    # the target's kernels for every decoding method alike (vsd/models/cpu_kernels.py): auto (CPU: the fastest
    # lossless kernel and thread count, timed; CUDA: dense) | dense | fp16_weights | int8 (lossy at T=0)
    target_kernel: str = "auto"

    def __post_init__(self) -> None:
        _choice("eval.method", self.method, ("decode", "reference"))
        _choice("eval.target_kernel", self.target_kernel, ("auto", "dense", "fp16_weights", "int8"))
        if self.answers and self.method != "decode":
            raise ConfigError(
                "eval.answers", "Spec-Bench answers come from decoding: needs eval.method=decode"
            )
        if self.model_id is not None and (not self.model_id.strip(" .") or "/" in self.model_id):
            raise ConfigError("eval.model_id", f"must be a file name (no '/'), got {self.model_id!r}")
        _choice(
            "eval.suite",
            self.suite,
            (
                "specbench_style",
                "mtbench",
                "humaneval",
                "math",
                "qa",
                "translation",
                "summarisation",
                "file",
                "smoke",
            ),
        )
        if self.suite == "file" and not self.prompts:
            raise ConfigError("eval.prompts", "required when eval.suite=file")
        _choice("eval.split", self.split, ("test", "val"))
        _positive("eval.per_category", self.per_category)
        _positive("eval.warmup", self.warmup, allow_zero=True)
        _positive("eval.max_turns", self.max_turns)
        for p in self.peers:
            _choice("eval.peers", p, ("hf_prompt_lookup",))


# --------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # sequences per optimizer step (global, after accumulation)
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 0.5
    # auto: on where the device computes bf16 natively (CUDA, AMX/AVX512-BF16 CPUs), off elsewhere
    # (vsd.runtime.resolve_precision); true | false: as given
    bf16_autocast: Any = "auto"
    features: str = "cache"  # cache | online (no cache; for targets too big to cache)
    features_batch_size: int = 1  # sequences per target forward building the cache (1: equals online exactly)
    ckpt_every: int = 100
    log_every: int = 10
    heldout_every: int = 50
    init_from: str | None = None  # draft checkpoint dir to warm-start from (required by VSD)
    max_seq_len: int = 512
    data_on_device: bool = False  # copy every item to the device once: no per-step host collation (GPU, DDP)

    def __post_init__(self) -> None:
        _positive("train.steps", self.steps)
        if self.bf16_autocast not in ("auto", True, False):
            raise ConfigError(
                "train.bf16_autocast", f"must be auto, true or false, got {self.bf16_autocast!r}"
            )
        _positive("train.batch_size", self.batch_size)
        _positive("train.grad_accum", self.grad_accum)
        if self.batch_size % self.grad_accum:
            raise ConfigError("train.grad_accum", "must divide train.batch_size")
        _positive("train.lr", self.lr)
        _positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        _unit("train.min_lr_ratio", self.min_lr_ratio)
        _positive("train.weight_decay", self.weight_decay, allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("train.betas", f"needs two values in [0, 1), got {self.betas}")
        _positive("train.grad_clip", self.grad_clip, allow_zero=True)
        _choice("train.features", self.features, ("cache", "online"))
        _positive("train.features_batch_size", self.features_batch_size)
        _positive("train.ckpt_every", self.ckpt_every)
        _positive("train.log_every", self.log_every)
        _positive("train.heldout_every", self.heldout_every)
        _positive("train.max_seq_len", self.max_seq_len)


# ------------------------------------------------------------------------------------------- tracker
@dataclass
class TrackerConfig:
    kind: str = "wandb"  # wandb | none
    project: str = "vsd"
    entity: str | None = None  # never hard-coded: set it (or WANDB_ENTITY) yourself
    mode: str | None = None  # offline | online | disabled; None: $WANDB_MODE, else offline
    group: str | None = None  # None: the sweep name for multiruns
    tags: list[str] = field(default_factory=list)
    log_checkpoint: bool = True  # draft checkpoint as a W&B artifact

    def __post_init__(self) -> None:
        _choice("tracker.kind", self.kind, ("wandb", "none"))
        if self.mode is not None:
            _choice("tracker.mode", self.mode, ("offline", "online", "disabled"))


# --------------------------------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    cache_dir: str = MISSING  # converted models, self-distilled data, target features (shared by runs)
    output_dir: str | None = None  # this run's directory (Hydra's run dir; None under the compose API)


@dataclass
class DraftConfig:
    checkpoint: str | None = None  # evaluate an existing draft: stages=[eval] draft.checkpoint=DIR


# --------------------------------------------------------------------------------------------- root
STAGES = ("data", "features", "train", "eval")


@dataclass
class Config:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    loss: LossConfig = MISSING
    decoding: DecodingConfig = MISSING
    eval: EvalConfig = MISSING
    train: TrainConfig = MISSING
    tracker: TrackerConfig = MISSING
    paths: PathsConfig = MISSING
    draft: DraftConfig = field(default_factory=DraftConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 for real targets where the device computes it natively (CUDA, AMX/AVX512-BF16 CPUs), else
    # fp32; fp32 for random test models (vsd.runtime.resolve_precision) | bfloat16 | float16 | float32
    dtype: str = "auto"
    threads: int | None = None  # torch intra-op threads; None: the cores this process may use (affinity)
    run_name: str = "default"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded but unused

    def __post_init__(self) -> None:
        for s in self.stages:
            _choice("stages", s, STAGES)
        if not self.stages:
            raise ConfigError("stages", "needs at least one stage")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _choice("dtype", self.dtype, ("auto", "bfloat16", "float16", "float32"))
        if self.threads is not None:
            _positive("threads", self.threads)
        if self.loss.name == "vsd" and self.loss.require_warm_start and "train" in self.stages:
            if not self.train.init_from and self.loss.vsd_start_step == 0:
                raise ConfigError(
                    "train.init_from",
                    "loss=vsd needs a warm start: set train.init_from=<EAGLE-3 draft dir> or "
                    "loss.vsd_start_step>0 (or loss.require_warm_start=false)",
                )
        if self.eval.method == "reference" and (
            self.decoding.temperature > 0 or self.decoding.drafter != "eagle3"
        ):
            raise ConfigError(
                "eval.method",
                "reference measures T=0 acceptance of an eagle3 draft; use eval.method=decode for "
                f"decoding.temperature={self.decoding.temperature}, decoding.drafter={self.decoding.drafter}",
            )
        if "train" not in self.stages and "eval" in self.stages and self.decoding.drafter == "eagle3":
            if not self.draft.checkpoint:
                raise ConfigError("draft.checkpoint", "stages without train need draft.checkpoint=<dir>")
