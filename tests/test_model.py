"""Whole-model properties on tiny random models: packing, padding, masks, gradients, state dict contents."""

import pytest
import torch
from torch.func import functional_call

import dynamic_chunker.model as model_module
from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.layers.mamba2 import Mamba2
from dynamic_chunker.layers.segments import Segments
from dynamic_chunker.layers.stack import Block, bucket_length

LAYOUTS = {
    1: ["m1T1t1"],
    2: ["m1t1", ["T1m1"], "t1M1"],
    3: ["t1m1", ["m1t1", ["T1M1"], "t1m1"], "m1T1"],
}


def tiny_config(stages: int, width: int = 16, headdim: int = 8, windows=(5, 2, 3)) -> HNetConfig:
    """1 to 3 stages, Mamba and attention layers, sliding windows shorter than the sequences used."""
    widths = [width * (2 + s) // 2 for s in range(stages)]  # e.g. 16, 24, 32: strictly growing, so pads exist
    return HNetConfig.from_dict(
        {
            "arch_layout": LAYOUTS[stages],
            "d_model": widths,
            "d_intermediate": [2 * w for w in widths],
            "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2, "chunk_size": 8, "headdim": headdim},
            "attn_cfg": {
                "num_heads": [2] * stages,
                "rotary_emb_dim": [4] * stages,
                "window_size": list(windows[:stages]),
            },
        }
    )


def tiny_model(stages: int, seed: int = 0, dtype=torch.float32, **kwargs) -> HNetForCausalLM:
    torch.manual_seed(seed)
    return HNetForCausalLM(tiny_config(stages, **kwargs), dtype=dtype).eval()


def random_bytes(length: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def valid_part(output, stage_index: int, row: int, name: str) -> torch.Tensor:
    """The values of one routing tensor at the valid positions of a row."""
    routing = output.routing[stage_index]
    values = getattr(routing, name)[row]
    return values if routing.mask is None else values[routing.mask[row]]


def assert_same_routing(together, alone_parts, row, atol):
    """Valid positions of ``row`` at every stage == the concatenation of the separate runs' valid positions."""
    assert len(together.routing) == len(alone_parts[0].routing)
    for s in range(len(together.routing)):
        mask = torch.cat([valid_part(a, s, 0, "boundary_mask") for a in alone_parts])
        assert torch.equal(valid_part(together, s, row, "boundary_mask"), mask), f"stage {s} boundaries differ"
        for name in ("boundary_prob", "selected_probs"):
            expected = torch.cat([valid_part(a, s, 0, name) for a in alone_parts])
            torch.testing.assert_close(valid_part(together, s, row, name), expected, rtol=0, atol=atol)


DTYPES = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_packed_documents_equal_each_document_alone(stages, dtype):
    model = tiny_model(stages, dtype=dtype)
    doc_lengths = [[13, 1, 29, 9, 20], [40, 2, 30]]
    ids = random_bytes(72, seed=stages, batch=2)
    document_ids = torch.cat(
        [torch.repeat_interleave(torch.arange(len(d)), torch.tensor(d))[None] for d in doc_lengths]
    )
    with torch.no_grad():
        packed = model(ids, document_ids=document_ids)
        for row, lengths in enumerate(doc_lengths):
            bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
            alone = [model(ids[row : row + 1, lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
            logits = torch.cat([a.logits[0] for a in alone])
            torch.testing.assert_close(packed.logits[row], logits, rtol=0, atol=DTYPES[dtype])
            assert_same_routing(packed, alone, row, DTYPES[dtype])
    assert len(packed.routing) == stages - 1
    if stages > 1:  # the tiny models really chunk: some but not all positions are boundaries
        fraction = packed.routing[0].boundary_mask.float().mean()
        assert 0.1 < fraction < 0.9


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_right_padded_batch_equals_each_row_alone(stages):
    model = tiny_model(stages, seed=1)
    lengths = [50, 1, 23, 37]
    ids = random_bytes(50, seed=10 + stages, batch=len(lengths))  # padding holds random bytes, not zeros
    mask = torch.arange(50) < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(ids, mask=mask)
        for row, n in enumerate(lengths):
            alone = model(ids[row : row + 1, :n])
            torch.testing.assert_close(padded.logits[row, :n], alone.logits[0], rtol=0, atol=1e-5)
            assert_same_routing(padded, [alone], row, 1e-5)
    for routing in padded.routing:  # padding is never a boundary
        assert not routing.boundary_mask[~routing.mask].any()


@pytest.mark.parametrize("stages", [2, 3])
def test_packed_and_padded_together(stages):
    model = tiny_model(stages, seed=2)
    ids = random_bytes(40, seed=3, batch=2)
    mask = torch.arange(40) < torch.tensor([[40], [25]])
    document_ids = torch.zeros(2, 40, dtype=torch.long)
    document_ids[0, 17:] = 1
    document_ids[1, 10:] = 1
    document_ids[1, 25:] = 2  # the padding: a "document" of its own, which must not matter
    with torch.no_grad():
        out = model(ids, mask=mask, document_ids=document_ids)
        pieces = {0: [(0, 17), (17, 40)], 1: [(0, 10), (10, 25)]}
        for row, spans in pieces.items():
            alone = [model(ids[row : row + 1, lo:hi]) for lo, hi in spans]
            valid = int(mask[row].sum())
            logits = torch.cat([a.logits[0] for a in alone])
            torch.testing.assert_close(out.logits[row, :valid], logits, rtol=0, atol=1e-5)
            assert_same_routing(out, alone, row, 1e-5)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_no_mask_equals_all_true_mask_and_single_document(stages):
    model = tiny_model(stages, seed=3)
    ids = random_bytes(30, seed=4, batch=3)
    with torch.no_grad():
        plain = model(ids)
        masked = model(ids, mask=torch.ones(3, 30, dtype=torch.bool))
        one_doc = model(ids, document_ids=torch.full((3, 30), 7))
    for other in (masked, one_doc):
        torch.testing.assert_close(other.logits, plain.logits, rtol=0, atol=1e-6)
        for a, b in zip(plain.routing, other.routing):
            assert torch.equal(a.boundary_mask, b.boundary_mask)
            torch.testing.assert_close(a.boundary_prob, b.boundary_prob, rtol=0, atol=1e-6)


def test_rows_of_a_batch_are_independent():
    model = tiny_model(3, seed=4)
    ids = random_bytes(33, seed=5, batch=3)
    with torch.no_grad():
        batch = model(ids)
        for row in range(3):
            alone = model(ids[row : row + 1])
            torch.testing.assert_close(batch.logits[row], alone.logits[0], rtol=0, atol=1e-5)
            assert_same_routing(batch, [alone], row, 1e-5)


def test_output_shapes_and_routing_records():
    model = tiny_model(3, seed=5)
    out = model(random_bytes(21, seed=6, batch=2))
    assert out.logits.shape == (2, 21, 256)
    assert len(out.routing) == 2
    assert out.routing[0].boundary_prob.shape == (2, 21)
    for routing in out.routing:
        p = routing.boundary_prob
        assert routing.boundary_mask.shape == p.shape == routing.selected_probs.shape
        assert routing.boundary_mask.dtype == torch.bool
        assert torch.all(p[:, 0] == 1.0) and routing.boundary_mask[:, 0].all()
        torch.testing.assert_close(routing.selected_probs, torch.maximum(p, 1 - p))
    # the inner stage sees exactly the selected positions of the outer one
    counts = out.routing[0].boundary_mask.sum(1)
    assert out.routing[1].boundary_prob.shape[1] == int(counts.max())
    assert out.routing[1].mask.sum(1).tolist() == counts.tolist()


def test_uint8_and_int32_byte_ids_work_like_int64():
    model = tiny_model(2, seed=6)
    ids = random_bytes(12, seed=7)
    with torch.no_grad():
        expected = model(ids).logits
        for dtype in (torch.uint8, torch.int32):
            torch.testing.assert_close(model(ids.to(dtype)).logits, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- gradients
def gradcheck_setup(stages: int, seed: int, length: int = 14):
    """A float64 model and inputs (two rows: packed documents / right padding) with no p within 1e-3 of 0.5."""
    model = tiny_model(stages, seed=seed, dtype=torch.float64, width=8, headdim=4, windows=(3, 2, 2))
    alphabet = torch.tensor([3, 65, 97, 101, 200, 32])
    ids = alphabet[torch.randint(0, len(alphabet), (2, length), generator=torch.Generator().manual_seed(seed))]
    kwargs = {
        "mask": torch.arange(length) < torch.tensor([[length], [length - 4]]),
        "document_ids": (torch.arange(length) >= length // 2).long().expand(2, -1) * torch.tensor([[1], [0]]),
    }
    with torch.no_grad():
        out = model(ids, **kwargs)
    for s, routing in enumerate(out.routing):
        margin = (routing.boundary_prob - 0.5).abs()[routing.mask if routing.mask is not None else slice(None)]
        assert margin.min() > 1e-3, f"stage {s}: a boundary decision is too close to 0.5 for finite differences"
    return model, ids, alphabet, kwargs


def embedding_rows_call(model, ids, alphabet, kwargs, names):
    """f(embedding rows of the used bytes, *named parameters) -> the model output."""
    base = dict(model.named_parameters())

    def call(rows, *params):
        weight = base["embeddings.weight"].index_put((alphabet,), rows)
        overrides = {"embeddings.weight": weight, **dict(zip(names, params))}
        return functional_call(model, overrides, (ids,), kwargs)

    inputs = [base["embeddings.weight"][alphabet].detach().clone().requires_grad_()]
    inputs += [base[n].detach().clone().requires_grad_() for n in names]
    return call, inputs


@pytest.mark.parametrize("stages", [2, 3])
def test_gradcheck_whole_model_float64(stages, monkeypatch, one_thread):
    """Every gradient path except the STE (whose backward is deliberately not the forward's derivative).

    With the STE replaced by its forward value (the identity), the model is an ordinary differentiable function of
    embeddings, encoder, routing, inner stages (including the gradient of the dechunk EMA w.r.t. p) and decoder.
    """
    monkeypatch.setattr(model_module, "straight_through", lambda values, confidence: values)
    model, ids, alphabet, kwargs = gradcheck_setup(stages, seed=11)
    names = [
        "backbone.routing_module.q_proj_layer.weight",
        "backbone.encoder.layers.1.mixer.A_log" if stages == 3 else "backbone.encoder.layers.1.norm1.weight",
        "backbone.main_network.pad_dimension",
        "backbone.residual_proj.bias",
        "backbone.decoder.layers.1.mixer.dt_bias" if stages == 2 else "backbone.decoder.layers.0.mixer.D",
    ]
    call, inputs = embedding_rows_call(model, ids, alphabet, kwargs, names)
    weights = torch.randn(2, ids.shape[1], 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    valid = kwargs["mask"][..., None]
    assert torch.autograd.gradcheck(
        lambda *xs: (call(*xs).logits * weights * valid).sum(), inputs, eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_gradcheck_with_straight_through_downstream_of_routing(one_thread):
    """Parameters after the last routing decision see no STE term: plain gradcheck holds with the real STE."""
    model, ids, alphabet, kwargs = gradcheck_setup(2, seed=11)
    names = [
        "backbone.main_network.main_network.layers.1.mixer.D",
        "backbone.main_network.main_network.layers.0.norm2.weight",
        "backbone.residual_proj.bias",
        "backbone.decoder.layers.1.mixer.A_log",
        "backbone.decoder.rmsnorm.weight",
    ]
    base = dict(model.named_parameters())
    inputs = [base[n].detach().clone().requires_grad_() for n in names]
    weights = torch.randn(2, ids.shape[1], 256, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(*params):
        return (functional_call(model, dict(zip(names, params)), (ids,), kwargs).logits * weights).sum()

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_ratio_loss_float64(one_thread):
    model, ids, alphabet, kwargs = gradcheck_setup(3, seed=11)
    names = ["backbone.routing_module.k_proj_layer.weight", "backbone.main_network.encoder.layers.0.norm1.weight"]
    call, inputs = embedding_rows_call(model, ids, alphabet, kwargs, names)
    assert torch.autograd.gradcheck(
        lambda *xs: sum(model.ratio_losses(call(*xs), [3.0, 2.0])), inputs, eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_ste_gradient_reaches_routing():
    """With the real STE, the LM loss gives the router a gradient sum(grad * upsampled) through c."""
    model = tiny_model(2, seed=7)
    out = model(random_bytes(25, seed=8))
    out.logits.logsumexp(-1).mean().backward()
    for name in ("q_proj_layer", "k_proj_layer"):
        grad = getattr(model.backbone.routing_module, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("tie", [False, True])
def test_state_dict_holds_only_parameters(tie):
    config = tiny_config(3)
    config.tie_embeddings = tie
    model = HNetForCausalLM(config)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert set(model.state_dict()) == parameters
    persistent = [name for name, _ in model.named_buffers() if name in model.state_dict()]
    assert persistent == []


def test_state_dict_round_trip_reproduces_outputs():
    source, target = tiny_model(3, seed=8), tiny_model(3, seed=9)
    ids = random_bytes(20, seed=9)
    target.load_state_dict(source.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, source(ids).logits, rtol=0, atol=0)


def test_float64_model_computes_in_float64():
    model = tiny_model(3, seed=10, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    out = model(random_bytes(16, seed=10))
    assert out.logits.dtype == torch.float64
    assert all(r.boundary_prob.dtype == torch.float64 for r in out.routing)
    # and the default build keeps the official float32 islands
    model32 = HNetForCausalLM(tiny_config(2), dtype=torch.bfloat16)
    assert model32.backbone.residual_proj.weight.dtype == torch.float32
    assert model32.backbone.encoder.layers[0].mixer.D.dtype == torch.float32


def test_bfloat16_model_runs_with_float32_islands():
    model = tiny_model(3, seed=11, dtype=torch.bfloat16)
    out = model(random_bytes(24, seed=11, batch=2), mask=torch.arange(24) < torch.tensor([[24], [9]]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert all(r.boundary_prob.dtype == torch.bfloat16 for r in out.routing)  # routed in the model dtype
    out.logits.float().logsumexp(-1).mean().backward()
    assert model.backbone.residual_proj.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("packed", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(packed):
    model = tiny_model(3, seed=8)
    ids = random_bytes(60, seed=9, batch=2)
    docs = (torch.arange(60) >= 23).long().expand(2, 60) if packed else None

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(ids, document_ids=docs)
        loss = out.logits.logsumexp(-1).mean() + sum(model.ratio_losses(out, [2.0, 2.0]))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.set_gradient_checkpointing(True)
    stacks = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert stacks and all(m.gradient_checkpointing for m in stacks)
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)
    model.set_gradient_checkpointing(True, stages=[1])
    assert [m.gradient_checkpointing for m in (model.backbone.encoder, model.backbone.main_network.encoder)] == [
        False,
        True,
    ]
    with pytest.raises(ValueError, match="stages must be in 0..2"):
        model.set_gradient_checkpointing(True, stages=[3])


def loss_and_grads(model, ids, docs):
    model.zero_grad(set_to_none=True)
    out = model(ids, document_ids=docs)
    loss = out.logits.logsumexp(-1).mean() + sum(model.ratio_losses(out, [2.0] * (model.config.num_stages - 1)))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_length_buckets_of_compiled_blocks_change_no_loss_or_gradient():
    """The right padding to a length bucket (what compiled blocks see), here without the compiler."""
    model = tiny_model(3, seed=8)
    ids, docs = random_bytes(70, seed=9, batch=2), (torch.arange(70) >= 23).long().expand(2, 70)
    loss, grads = loss_and_grads(model, ids, docs)
    blocks = [m for m in model.modules() if isinstance(m, Block) and isinstance(m.mixer, Mamba2)]
    seen = []
    for block in blocks:
        block.compiled = lambda residual, segments, dtype, block=block: seen.append(residual.shape[1]) or (
            block.uncompiled_forward(residual, segments, dtype)
        )
    bucketed_loss, bucketed = loss_and_grads(model, ids, docs)
    assert seen and all(bucket_length(length) == length for length in seen)
    torch.testing.assert_close(bucketed_loss, loss, rtol=1e-6, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(bucketed[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation and generation stay eager
        seen.clear()
        model(ids)
        assert not seen
    for block in blocks:  # compiled again for chunking: the same compiled forward, now also without gradients
        compiled = block.compiled
        block.compile_bucketed(inference=True)
        assert block.compiled is compiled
    with torch.no_grad():
        model(ids)
        assert seen


def test_bucket_lengths_are_few_and_close():
    lengths = range(1, 5000)
    buckets = [bucket_length(n) for n in lengths]
    assert all(b >= n and b % 64 == 0 for n, b in zip(lengths, buckets, strict=True))
    assert all(b <= 1.25 * n for n, b in zip(lengths, buckets, strict=True) if n > 256)
    assert len({b for n, b in zip(lengths, buckets, strict=True) if 1024 < n <= 2048}) == 4  # four per octave


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss_and_gradients(one_thread):
    """Compiled blocks against eager ones, also with gradient checkpointing."""
    model = tiny_model(2, seed=8)  # three Mamba-2 blocks of two widths: a few minutes of compiling on 2 cores
    ids, docs = random_bytes(70, seed=9, batch=2), (torch.arange(70) >= 23).long().expand(2, 70)
    loss, grads = loss_and_grads(model, ids, docs)
    assert model.compile_blocks() == sum(isinstance(m, Mamba2) for m in model.modules())
    compiled_loss, compiled = loss_and_grads(model, ids, docs)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    assert compiled.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(compiled[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)
    # compiled blocks recomputed in the backward pass (gradient checkpointing): the same again
    stacks = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    for stack in stacks:
        stack.gradient_checkpointing = True
    recomputed_loss, recomputed = loss_and_grads(model, ids, docs)
    torch.testing.assert_close(recomputed_loss, loss, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(recomputed[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)



@pytest.mark.slow
def test_compiled_block_under_bf16_autocast_gives_the_eager_gradients(one_thread):
    """A Mamba-2 block compiled under bf16 autocast, with document starts, at a size (9 x 512 positions, width 128)
    where torch 2.13's CPU code for casting the bf16 conv outputs part by part gave garbage or non-finite gradients
    (layers/mamba2.py now casts before the split)."""
    torch.manual_seed(3)
    block = Block(Mamba2(128, d_state=32, headdim=64, chunk_size=64), 128, None)
    x = torch.randn(9, 512, 128, requires_grad=True)
    segments = Segments(None, torch.rand(9, 512, generator=torch.Generator().manual_seed(4)) < 0.004)

    def gradients():
        block.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x, segments, torch.float32)
        out.float().square().mean().backward()
        return [x.grad, *(p.grad for p in block.parameters())]

    eager = gradients()
    block.compile_bucketed()
    for got, want in zip(gradients(), eager, strict=True):  # bf16 matmuls summed in another order: a few roundings
        torch.testing.assert_close(got, want, rtol=1e-2, atol=3e-2 * want.abs().max().item())

def test_bf16_autocast_training_step_is_close_to_float32():
    model = tiny_model(3, seed=12)
    ids = random_bytes(80, seed=13, batch=2)

    def loss_and_grads(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters() if p.grad is not None], out

    loss32, grads32, _ = loss_and_grads(False)
    loss16, grads16, out16 = loss_and_grads(True)
    assert out16.logits.dtype == torch.bfloat16
    assert abs(loss16.item() - loss32.item()) < 0.02 * loss32.item()
    assert len(grads16) == len(grads32) and all(torch.isfinite(g).all() for g in grads16)
