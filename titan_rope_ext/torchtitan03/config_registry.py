"""Recipes for torchtitan 0.3: config functions returning ``RopeTrainer.Config`` (a ``rope_scaling`` section).

    titan-rope train --module titan_rope_ext.torchtitan03 --config llama3_debugmodel_yarn          # CPU
    torchrun --nproc-per-node 8 -m torchtitan.train --module titan_rope_ext.torchtitan03 \\
        --config llama3_8b_64k_yarn --rope_scaling.factor 8                                       # GPUs

(``--module titan_rope_ext.torchtitan03`` finds this module as torchtitan finds a model's
``config_registry``.) Each recipe starts from torchtitan's own config function for the flavor and
changes what its docstring lists; every ``--rope_scaling.<key>`` and torchtitan flag still applies.

Debug recipes (CPU-runnable through ``titan-rope train``): the llama3 (head_dim 16, theta 5e5) and qwen3
(head_dim 128, theta 1e6) debug flavors on the package's tiny corpus and tokenizer, trained at 256
positions as if pretrained at 64: factor 4 = 256 / 64. One llama3 recipe per method.
Long-context recipes (GPUs, your tokenizer and weights in ``hf_assets_path``): Llama-3-8B 8K -> 64K
(YaRN, Llama 3.1's scaling) and Qwen3-0.6B 32K -> 128K (YaRN, past the flavor's RoPE length of 40960,
which the section's trainer lifts to ``training.seq_len``).
"""

from __future__ import annotations

from torchtitan.components.optimizer import default_adamw
from torchtitan.trainer import Trainer

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan03.jobs import CORPUS, TOKENIZER, with_rope_scaling
from titan_rope_ext.torchtitan03.trainer import RopeTrainer

TRAINED = 64  # debug recipes: the length the model "was pretrained at"
SEQ_LEN = 256  # debug recipes: the training length, 4x TRAINED


def _debug(stock: Trainer.Config, section: RopeScaling, steps: int = 50) -> RopeTrainer.Config:
    config = with_rope_scaling(stock)
    config.rope_scaling = section
    config.hf_assets_path = TOKENIZER  # byte-level BPE, 2048 ids = the debug flavors' vocab
    config.dataloader.dataset_path = CORPUS  # 600 documents, each hiding a pass key early and asking for it last
    config.training.local_batch_size = 4
    config.training.seq_len = SEQ_LEN
    config.training.steps = steps
    config.lr_scheduler.warmup_steps = 5
    config.optimizer = default_adamw(lr=1e-3)
    config.metrics.log_freq = 5
    return config


def _llama3_debug(section: RopeScaling) -> RopeTrainer.Config:
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    return _debug(llama3_debugmodel(), section)


def llama3_debugmodel_yarn() -> RopeTrainer.Config:
    """YaRN 4x (256 / 64): bands turning > 32 times in 64 positions kept, < 1 time divided by 4, a ramp
    between; attention factor 0.1 ln 4 + 1 = 1.1386 on q and k (logits x1.2965)."""
    return _llama3_debug(RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=TRAINED))


def llama3_debugmodel_default() -> RopeTrainer.Config:
    """Plain RoPE at theta 5e5 (stock 0.3 applies Llama 3.1 scaling to this flavor; this removes it)."""
    return _llama3_debug(RopeScaling(rope_type="default"))


def llama3_debugmodel_linear() -> RopeTrainer.Config:
    """Position interpolation 4x: every band's frequency divided by 4."""
    return _llama3_debug(RopeScaling(rope_type="linear", factor=4.0))


def llama3_debugmodel_ntk() -> RopeTrainer.Config:
    """Static NTK-aware 4x: theta 5e5 * 4^(16/14) = 2.43e6; the highest band kept, the lowest divided by 4."""
    return _llama3_debug(RopeScaling(rope_type="ntk", factor=4.0))


def llama3_debugmodel_dynamic() -> RopeTrainer.Config:
    """Dynamic NTK 4x over 64: at 256 positions the base grows by (4 * 256/64 - 3)^(16/14) = 13^(8/7)."""
    return _llama3_debug(RopeScaling(rope_type="dynamic", factor=4.0, original_max_position_embeddings=TRAINED))


def llama3_debugmodel_llama3() -> RopeTrainer.Config:
    """Llama 3.1 scaling on a 64-position original: wavelengths > 64 divided by 8, < 16 kept, blended between."""
    return _llama3_debug(RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=TRAINED))


def llama3_debugmodel_longrope() -> RopeTrainer.Config:
    """LongRoPE: 8 per-band rescales (head_dim 16); 256 > 64 selects long_factor; attention factor
    sqrt(1 + ln 4 / ln 64) = 1.1547."""
    return _llama3_debug(RopeScaling(rope_type="longrope", original_max_position_embeddings=TRAINED, factor=4.0,
                                     short_factor=[1.0] * 8, long_factor=[1.0, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 4.0]))


def qwen3_debugmodel_yarn() -> RopeTrainer.Config:
    """qwen3 debug (cos/sin cache, head_dim 128, theta 1e6) with YaRN 4x (256 / 64); factor 1.1386 on cos and sin."""
    from torchtitan.models.qwen3.config_registry import qwen3_debugmodel

    return _debug(qwen3_debugmodel(), RopeScaling(rope_type="yarn", factor=4.0,
                                                  original_max_position_embeddings=TRAINED))


def llama3_8b_64k_yarn() -> RopeTrainer.Config:
    """Llama-3-8B (trained at 8K, theta 5e5) to 64K with YaRN: factor 8 = 65536 / 8192, beta 32 / 1 (the
    paper's); attention factor 0.1 ln 8 + 1 = 1.2079 on q and k. Context parallel 8 over the 64K window."""
    from torchtitan.models.llama3.config_registry import llama3_8b

    config = with_rope_scaling(llama3_8b())
    config.rope_scaling = RopeScaling(rope_type="yarn", factor=8.0, original_max_position_embeddings=8192)
    return _long(config, seq_len=65536, lr=2e-5)


def llama3_8b_64k_llama3() -> RopeTrainer.Config:
    """Llama-3-8B to 64K with Llama 3.1's scaling (factor 8, low 1, high 4, original 8192): wavelengths
    > 8192 divided by 8, < 2048 kept, blended between; no attention factor. Stock 0.3's own llama3 cache."""
    from torchtitan.models.llama3.config_registry import llama3_8b

    config = with_rope_scaling(llama3_8b())
    config.rope_scaling = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)
    return _long(config, seq_len=65536, lr=2e-5)


def qwen3_0_6b_128k_yarn() -> RopeTrainer.Config:
    """Qwen3-0.6B (native 32K, theta 1e6) to 128K with YaRN as its model card gives it (factor 4 = 131072 /
    32768); attention factor 1.1386 on cos and sin. 131072 is past the flavor's RoPE length 40960: the
    section's trainer builds the cache for training.seq_len. With the model folder in hf_assets_path,
    --rope_scaling.from_hf_assets reads these keys from its config.json instead."""
    from torchtitan.models.qwen3.config_registry import qwen3_0_6b

    config = with_rope_scaling(qwen3_0_6b())
    config.rope_scaling = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=32768)
    return _long(config, seq_len=131072, lr=1e-5)


def _long(config: RopeTrainer.Config, seq_len: int, lr: float) -> RopeTrainer.Config:
    config.training.seq_len = seq_len
    config.training.local_batch_size = 1
    config.parallelism.context_parallel_degree = 8
    config.lr_scheduler.warmup_steps = 20
    config.optimizer = default_adamw(lr=lr)  # fine-tuning: stock's pretraining 3e-4 is too high here
    return config
