"""H-Net: the recursive stage (encoder -> routing -> chunk -> inner -> dechunk -> decoder) and the byte LM.

Module attribute names follow the official implementation so that its state dicts load with strict=True.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .chunking import (
    ChunkLayer,
    DeChunkLayer,
    RoutingModule,
    RoutingOutput,
    chunk_order,
    ratio_loss,
    straight_through,
)
from .config import HNetConfig
from .inference import InferenceCache, StageCache, StepOutput
from .layers.mamba2 import Mamba2
from .layers.precision import compute_dtype, upcast
from .layers.segments import Segments
from .layers.stack import Block, Isotropic


class HNet(nn.Module):
    """Stage ``stage`` of the hierarchy; its ``main_network`` is the next stage or, innermost, a plain stack."""

    def __init__(self, config: HNetConfig, stage: int = 0, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.stage = stage
        self.is_innermost = stage == config.num_stages - 1
        d = config.d_model[stage]
        d_prev = config.d_model[stage - 1] if stage > 0 else d
        self.pad_dimension = nn.Parameter(torch.zeros(d - d_prev, **factory)) if d > d_prev else None

        def stack(letters: list[str]) -> Isotropic:
            ssm = config.ssm_cfg
            return Isotropic(
                letters,
                d,
                config.mlp_width(stage),
                {
                    "d_state": ssm.d_state,
                    "d_conv": ssm.d_conv,
                    "expand": ssm.expand,
                    "headdim": ssm.headdim,
                    "chunk_size": ssm.chunk_size,
                },
                config.attn_cfg.num_heads[stage],
                config.attn_cfg.rotary_emb_dim[stage],
                config.attn_cfg.window_size[stage],
                **factory,
            )

        stacks = config.stacks(stage)
        if self.is_innermost:
            self.main_network = stack(stacks["main"])
            return
        self.encoder = stack(stacks["encoder"])
        self.main_network = HNet(config, stage + 1, **factory)
        self.decoder = stack(stacks["decoder"])
        self.routing_module = RoutingModule(d, config.rule(stage), **factory)
        self.chunk_layer = ChunkLayer()
        self.dechunk_layer = DeChunkLayer()
        # fp32 on purpose, as in the official model (float64 in a float64 model)
        self.residual_proj = nn.Linear(d, d, bias=True, device=device, dtype=compute_dtype(dtype))
        nn.init.zeros_(self.residual_proj.weight)

    def forward(
        self,
        x: torch.Tensor,
        segments: Segments,
        cache: StageCache | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[RoutingOutput]]:
        """x (B, L, D_in) -> (B, L, D_in) and the routing decisions of this and every inner stage.

        With ``cache`` (prefill) every component also stores its decoding state at each row's last valid position.
        ``input_ids`` (B, L): the bytes, at stage 0 only (for the ``space`` boundary rule).
        """
        if cache is None:
            cache = StageCache()
        d_in = x.shape[-1]
        x = self.widen(x)
        if self.is_innermost:
            return self.main_network(x, segments, cache.main)[..., :d_in], []

        hidden = self.encoder(x, segments, cache.encoder)
        residual = self.residual_proj(upcast(hidden))
        routing = self.routing_module(hidden, segments, cache.routing, input_ids)
        chunks, inner_segments, index = self.chunk_layer(hidden, routing, segments)
        inner_out, inner_routing = self.main_network(chunks, inner_segments, cache.main)
        upsampled = self.dechunk_layer(inner_out, routing, index, inner_segments, cache.dechunk)
        combined = (straight_through(upcast(upsampled), upcast(routing.selected_probs)) + residual).to(x.dtype)
        return self.decoder(combined, segments, cache.decoder)[..., :d_in], [routing, *inner_routing]

    def stacks(self):
        """(stage index, stack) for every layer stack of this stage and the stages inside it, outermost first."""
        if self.is_innermost:
            yield self.stage, self.main_network
            return
        yield self.stage, self.encoder
        yield self.stage, self.decoder
        yield from self.main_network.stacks()

    def widen(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D_prev) -> (..., D): append the learned ``pad_dimension`` when this stage is wider than the last."""
        if self.pad_dimension is None:
            return x
        return torch.cat([x, self.pad_dimension.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)

    def allocate_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> StageCache:
        args = (batch_size, max_seqlen, dtype, device)
        if self.is_innermost:
            return StageCache(main=self.main_network.allocate_cache(*args))
        return StageCache(
            main=self.main_network.allocate_cache(*args),
            encoder=self.encoder.allocate_cache(*args),
            decoder=self.decoder.allocate_cache(*args),
            routing=self.routing_module.allocate_state(batch_size, dtype, device),
            dechunk=self.dechunk_layer.allocate_state(batch_size, self.residual_proj.in_features, dtype, device),
        )

    def step(self, x: torch.Tensor, cache: StageCache, rows: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
        """One new vector for each batch row in ``rows`` (k,): x (k, D_in) -> (k, D_in).

        The inner stage advances only for the rows whose router fired (gathered, stepped, scattered back); the
        others reuse their last smoothed chunk vector. Decisions are written to ``boundaries`` (B, stages).
        """
        d_in = x.shape[-1]
        x = self.widen(x)
        if self.is_innermost:
            return self.main_network.step(x, cache.main, rows)[..., :d_in]

        hidden = self.encoder.step(x, cache.encoder, rows)
        residual = self.residual_proj(upcast(hidden))
        prob, boundary = self.routing_module.step(hidden, cache.routing, rows)
        boundaries[rows, self.stage] = boundary.long()
        fired = boundary.nonzero().squeeze(1)
        inner = None
        if fired.numel():
            inner = self.main_network.step(hidden[fired], cache.main, rows[fired], boundaries)
        smoothed = self.dechunk_layer.step(inner, prob, fired, cache.dechunk, rows)
        combined = (upcast(smoothed.to(x.dtype)) + residual).to(x.dtype)  # STE(c) = 1 in the forward pass
        return self.decoder.step(combined, cache.decoder, rows)[..., :d_in]


@dataclass
class HNetOutput:
    logits: torch.Tensor  # (B, L, 256)
    routing: list[RoutingOutput] = field(default_factory=list)  # one per chunking stage, outermost first


@dataclass
class BoundaryOutput:
    """Every chunking stage's routing (outermost first) and where each stage's positions sit in the input bytes."""

    routing: list[RoutingOutput]
    # positions[s] (B, L_s): the byte index of each position of stage s (stage 0: 0..L-1). Stage s + 1 positions are
    # the chunks of stage s, so positions[s + 1] holds the first byte of each chunk. Valid where routing[s].mask is
    # True (or everywhere when it is None); padded entries hold arbitrary in-range indices.
    positions: list[torch.Tensor]

    def chunk_starts(self, stage: int) -> torch.Tensor:
        """(B, L) bool over the input bytes: True where a chunk of stage ``stage`` starts."""
        routing, positions = self.routing[stage], self.positions[stage]
        starts = torch.zeros(positions.shape[0], self.positions[0].shape[1], dtype=torch.bool, device=positions.device)
        return starts.scatter_(1, positions, routing.boundary_mask)  # padded entries carry False (a no-op write)


def routing_positions(routing: list[RoutingOutput]) -> list[torch.Tensor]:
    """positions[s] (B, L_s) of :class:`BoundaryOutput` from the routing decisions alone (the chunk layer's order)."""
    if not routing:
        return []
    batch, length = routing[0].boundary_mask.shape
    positions = [torch.arange(length, device=routing[0].boundary_mask.device).expand(batch, length)]
    for r in routing[:-1]:
        positions.append(positions[-1].gather(1, chunk_order(r.boundary_mask)[0]))
    return positions


class HNetForCausalLM(nn.Module):
    def __init__(self, config: HNetConfig, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, HNetConfig):
            raise TypeError(f"expected an HNetConfig, got {type(config).__name__}; use HNetConfig.from_json(path)")
        self.config = config
        factory = {"device": device, "dtype": dtype}
        d0 = config.d_model[0]
        self.embeddings = nn.Embedding(config.vocab_size, d0, **factory)
        self.backbone = HNet(config, 0, **factory)
        self.lm_head = nn.Linear(d0, config.vocab_size, bias=False, **factory)
        if config.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        init_weights(self)
        # read input values to check them (one device-to-host copy per call); the trainer switches this off
        self.check_inputs = True

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        inference_params: InferenceCache | None = None,
    ) -> HNetOutput:
        """Next-byte logits for a (B, L) batch of byte ids.

        mask: (B, L) bool, True on valid positions, right padding only; None = every position valid.
        document_ids: (B, L) ints; a new document starts wherever the id changes along a row. Documents
        packed into one row are then processed exactly as if each were alone.
        inference_params: a fresh cache from ``allocate_inference_cache`` to prefill for decoding with ``step``;
        each row's state ends at its own last valid position, so prompts of different lengths decode together.
        """
        segments = Segments.from_inputs(input_ids, mask, document_ids, self.config.vocab_size, self.check_inputs)
        stages = None
        if inference_params is not None:
            if not isinstance(inference_params, InferenceCache):
                raise TypeError(
                    f"inference_params must come from allocate_inference_cache, got {type(inference_params).__name__}"
                )
            inference_params.check_prefill(input_ids.shape, document_ids)
            stages = inference_params.stages
            inference_params.seqlen_offset = input_ids.shape[1]
        # uint8 ids are fine too
        hidden, routing = self.backbone(self.embeddings(input_ids.long()), segments, stages, input_ids)
        return HNetOutput(self.lm_head(hidden), routing)

    @torch.inference_mode()
    def boundaries(
        self, input_ids: torch.Tensor, mask: torch.Tensor | None = None, document_ids: torch.Tensor | None = None
    ) -> BoundaryOutput:
        """Every stage's chunk boundaries, running only each stage's encoder and router (no decoders, no innermost
        network, no logits): the routing of ``forward`` on the same inputs, at a fraction of its cost.
        """
        segments = Segments.from_inputs(input_ids, mask, document_ids, self.config.vocab_size, self.check_inputs)
        x = self.embeddings(input_ids.long())
        routing, stage, ids = [], self.backbone, input_ids
        while not stage.is_innermost:
            hidden = stage.encoder(stage.widen(x), segments)
            routing.append(stage.routing_module(hidden, segments, input_ids=ids))
            ids = None  # bytes exist at stage 0 only
            if stage.main_network.is_innermost:
                break  # the last router's chunks would only feed the innermost network
            x, segments, _ = stage.chunk_layer(hidden, routing[-1], segments)
            stage = stage.main_network
        return BoundaryOutput(routing, routing_positions(routing))

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None):
        """Empty decoding state for ``batch_size`` rows of at most ``max_seqlen`` bytes (prompt + generated).

        Fill it with a prefill ``model(input_ids, mask=..., inference_params=cache)`` (or start stepping from
        empty); ``dtype`` (default: the model's) is the storage dtype of KV caches, conv windows and router state.
        """
        for name, value in (("batch_size", batch_size), ("max_seqlen", max_seqlen)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        weight = self.embeddings.weight
        stages = self.backbone.allocate_cache(batch_size, max_seqlen, dtype or weight.dtype, weight.device)
        return InferenceCache(batch_size, max_seqlen, stages)

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache, check: bool = True) -> StepOutput:
        """Feed one new byte per row, input_ids (B,) or (B, 1), and get the logits for the byte after it.

        ``check=False`` skips reading the ids to check their range (a decode loop feeding sampled bytes).
        The encoders and decoders run for every row; each inner stage runs only for the rows whose router fired.
        """
        if not isinstance(cache, InferenceCache):
            raise TypeError(f"cache must come from allocate_inference_cache, got {type(cache).__name__}")
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 1:
            input_ids = input_ids[:, 0]
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 1:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"step takes one byte per row, shape (batch,) or (batch, 1); got {shape}")
        Segments.from_inputs(input_ids[:, None], vocab_size=self.config.vocab_size, check_values=check)
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"got {input_ids.shape[0]} rows but the cache was allocated for {cache.batch_size}")
        if cache.seqlen_offset >= cache.max_seqlen:
            raise ValueError(
                f"the cache is full: it holds max_seqlen={cache.max_seqlen} bytes per row; allocate a larger one"
            )
        batch = input_ids.shape[0]
        rows = torch.arange(batch, device=input_ids.device)
        boundaries = torch.full((batch, self.config.num_stages - 1), -1, dtype=torch.long, device=input_ids.device)
        hidden = self.backbone.step(self.embeddings(input_ids.long()), cache.stages, rows, boundaries)
        cache.seqlen_offset += 1
        return StepOutput(self.lm_head(hidden), boundaries)

    def generate(self, prompts, max_new_bytes: int = 256, **sampling) -> list[bytes]:
        """Continue each prompt (str or bytes) byte by byte; see :func:`dynamic_chunker.inference.generate`."""
        from .inference import generate

        return generate(self, prompts, max_new_bytes, **sampling)

    def generate_stream(self, prompt, max_new_bytes: int = 256, **sampling):
        """Yield the continuation of one prompt as text pieces; see :func:`dynamic_chunker.inference.stream`."""
        from .inference import stream

        return stream(self, prompt, max_new_bytes, **sampling)

    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``."""
        from .checkpoints import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> HNetForCausalLM:
        """Load a folder, a checkpoint file or a Hub id; see :func:`dynamic_chunker.checkpoints.from_pretrained`."""
        from .checkpoints import from_pretrained

        return from_pretrained(name_or_path, **kwargs)

    def set_gradient_checkpointing(self, enabled: bool = True, stages: list[int] | None = None) -> None:
        """Recompute the layers of the stacks of ``stages`` (default: all; the others are switched off) in the
        backward pass instead of storing their activations: training memory per stack drops to its layer inputs
        plus one layer's activations, for one extra forward pass.
        """
        stages = list(range(self.config.num_stages)) if stages is None else list(stages)
        unknown = [s for s in stages if not isinstance(s, int) or not 0 <= s < self.config.num_stages]
        if unknown:
            raise ValueError(f"stages must be in 0..{self.config.num_stages - 1}, got {unknown}")
        for stage, stack in self.backbone.stacks():
            stack.gradient_checkpointing = enabled and stage in stages

    def compile_blocks(self) -> int:
        """torch.compile the training forward of every block with a Mamba-2 mixer (static shapes, lengths padded to
        a bucket: see ``Block.compile_bucketed``); evaluation and generation stay eager. Returns how many blocks."""
        blocks = [m for m in self.modules() if isinstance(m, Block) and isinstance(m.mixer, Mamba2)]
        for block in blocks:
            block.compile_bucketed()
        return len(blocks)

    def ratio_losses(self, output: HNetOutput, targets: list[float]) -> list[torch.Tensor]:
        """One ratio loss per chunking stage (outermost first) with target bytes-per-chunk N per stage."""
        if len(targets) != len(output.routing):
            raise ValueError(f"need one ratio target per chunking stage ({len(output.routing)}), got {targets}")
        return [ratio_loss(r, n) for r, n in zip(output.routing, targets)]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}; "
                "load a file with torch.load(path, weights_only=True) or use HNetForCausalLM.from_pretrained"
            )
        if strict:
            expected = set(self.state_dict().keys())
            given = set(state_dict.keys())
            missing, unexpected = sorted(expected - given), sorted(given - expected)
            if missing or unexpected:
                raise ValueError(
                    "state dict does not match this config:"
                    + (f"\n  missing keys ({len(missing)}): {', '.join(missing[:20])}" if missing else "")
                    + (f"\n  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}" if unexpected else "")
                    + "\nCheck that the config matches the checkpoint."
                )
            own = self.state_dict()
            wrong = [
                f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state_dict.items()
                if tuple(v.shape) != tuple(own[k].shape)
            ]
            if wrong:
                raise ValueError("state dict shapes do not match this config:\n  " + "\n  ".join(wrong[:20]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def residual_heights(config: HNetConfig) -> list[int]:
    """n_res per stage (paper init): cumulative encoder+decoder heights, plus the main stack at the innermost stage."""

    def height(letters):
        return sum(2 if c.isupper() else 1 for c in letters)

    heights, total = [], 0
    for s in range(config.num_stages):
        stacks = config.stacks(s)
        if "main" in stacks:
            heights.append(total + height(stacks["main"]))
        else:
            total += height(stacks["encoder"]) + height(stacks["decoder"])
            heights.append(total)
    return heights


@torch.no_grad()
def init_weights(model: HNetForCausalLM, std: float = 0.02) -> None:
    """The official init: N(0, 0.02) linears, output projections scaled by 1/sqrt(n_res), embeddings N(0, 1)."""
    if model.lm_head.weight.is_meta:
        return
    heights = residual_heights(model.config)
    nn.init.normal_(model.embeddings.weight, std=1.0)
    if not model.config.tie_embeddings:
        nn.init.normal_(model.lm_head.weight, std=std)
    for stage, stack in model.backbone.stacks():
        for name, module in stack.named_modules():
            if isinstance(module, nn.Linear):
                scale = math.sqrt(heights[stage]) if name.endswith(("out_proj", "fc2")) else 1.0
                nn.init.normal_(module.weight, std=std / scale)
