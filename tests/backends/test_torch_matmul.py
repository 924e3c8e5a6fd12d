"""`torch_matmul`: float32 products on oneDNN equal `addmm` (gradients included); int8 products are exact."""

import os

import keras
import numpy as np
import pytest

from gpt2_lib.backends import torch_matmul
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM

pytestmark = pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's oneDNN path")


@pytest.fixture(autouse=True)
def onednn(monkeypatch):
    """The oneDNN path on every CPU (`float32_on_onednn` picks MKL on Intel's)."""
    monkeypatch.setattr(torch_matmul, "float32_on_onednn", lambda: True)


@pytest.mark.parametrize("vendor, mkl, expected", [
    ("AuthenticAMD", True, True),   # MKL's slow path on a CPU not made by Intel
    ("GenuineIntel", True, False),  # MKL on its own fast path
    ("Intel64 Family 6 Model 207 Stepping 2, GenuineIntel", True, False),  # Windows' string
    ("GenuineIntel", False, True),  # no MKL in this torch: oneDNN
    ("", True, True),
])
def test_float32_products_leave_mkl_only_on_cpus_not_made_by_intel(monkeypatch, vendor, mkl, expected):
    import torch

    monkeypatch.undo()  # the real `float32_on_onednn`, uncached
    monkeypatch.setattr(torch_matmul, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    assert torch_matmul.float32_on_onednn.__wrapped__() is expected


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("layout", ["kernel", "transposed_table"])
@pytest.mark.parametrize("gradients", [False, True])
def test_on_intel_only_few_row_transposed_products_without_gradients_go_to_onednn(
    monkeypatch, products, rows, layout, gradients
):
    import torch

    monkeypatch.setattr(torch_matmul, "float32_on_onednn", lambda: False)
    leaves, as_kernel = _operands(rows, 99, layout, None, requires_grad=gradients)
    x, stored = leaves
    out = torch_matmul.matmul(x, as_kernel(stored))
    expected = rows >= 3 and layout == "transposed_table" and not gradients
    assert len(products) == int(expected)
    torch.testing.assert_close(out, x @ as_kernel(stored), rtol=1e-5, atol=1e-4)


def test_cpu_vendor_is_read():
    vendor = torch_matmul._cpu_vendor()
    assert isinstance(vendor, str)
    if not os.path.exists("/proc/cpuinfo"):
        return
    with open("/proc/cpuinfo") as cpuinfo:
        listed = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("vendor_id")]
    if listed:
        assert vendor == listed[0]


def _operands(rows, width, layout, bias, requires_grad):
    import torch

    generator = torch.Generator().manual_seed(width + rows)
    x = torch.randn(rows, 48, generator=generator)
    if layout == "kernel":
        stored = torch.randn(48, width, generator=generator)
    else:  # a tied table `(vocab, hidden)`, multiplied as its transposed view
        stored = torch.randn(width, 48, generator=generator)
    b = None
    if bias == "contiguous":
        b = torch.randn(width, generator=generator)
    elif bias == "strided":  # every other element of a longer vector
        b = torch.randn(2 * width, generator=generator)[::2]
    leaves = [t.requires_grad_(requires_grad) for t in (x, stored) + ((b,) if b is not None else ())]
    return leaves, (lambda stored: stored if layout == "kernel" else stored.t())


@pytest.mark.parametrize("rows", [1, 2, 8])
@pytest.mark.parametrize("layout", ["kernel", "transposed_table"])
@pytest.mark.parametrize("bias", [None, "contiguous", "strided"])
def test_outputs_and_gradients_equal_addmm(rows, layout, bias):
    import torch

    leaves, as_kernel = _operands(rows, 99, layout, bias, requires_grad=True)
    x, stored = leaves[:2]
    b = leaves[2] if len(leaves) > 2 else None
    assert torch_matmul.supports(x, as_kernel(stored))
    weights = torch.linspace(-1, 1, 99)  # a loss whose gradient is not uniform

    def outputs_and_gradients(product):
        out = product(x, as_kernel(stored), b)
        grads = torch.autograd.grad((out * weights).square().sum(), leaves)
        return [out.detach(), *grads]

    got = outputs_and_gradients(torch_matmul.matmul)
    expected = outputs_and_gradients(
        lambda x, kernel, b: x @ kernel if b is None else torch.addmm(b, x, kernel)
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def test_without_gradients_no_autograd_node_and_empty_rows():
    import torch

    (x, stored), _ = _operands(4, 8, "kernel", None, requires_grad=False)
    out = torch_matmul.matmul(x, stored)
    assert out.grad_fn is None
    torch.testing.assert_close(out, x @ stored, rtol=1e-5, atol=1e-5)
    empty = torch_matmul.matmul(x[:0], stored, torch.ones(8))
    assert empty.shape == (0, 8)


def test_only_float32_cpu_tensors_are_supported():
    import torch

    x = torch.ones(2, 3)
    assert torch_matmul.supports(x, torch.ones(3, 4))
    assert not torch_matmul.supports(x, torch.ones(3, 4, dtype=torch.bfloat16))
    assert not torch_matmul.supports(x, np.ones((3, 4), "float32"))
    assert not torch_matmul.supports(x, torch.ones(3, 4, device="meta"))


def _backbone(dtype="float32", dropout=0.0):
    keras.utils.set_random_seed(0)
    return GPT2Backbone(vocabulary_size=100, num_layers=2, num_heads=4, hidden_dim=32,
                        intermediate_dim=64, max_sequence_length=16, dropout=dropout, dtype=dtype)


@pytest.fixture
def products(monkeypatch):
    """Counts oneDNN products; `products.disable()` makes every call site fall back."""
    class Calls(list):
        def disable(self):
            monkeypatch.setattr(torch_matmul, "_linear", lambda: None)

    calls = Calls()
    original = torch_matmul._product
    monkeypatch.setattr(torch_matmul, "_product", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # the torch fast path, then Keras' layers
def test_causal_lm_loss_and_gradients_equal_the_mkl_path(products, dropout):
    """Training through `GPT2CausalLM` (blocks, projections and the tied
    head) runs its float32 products on oneDNN, with the loss and every
    gradient of the plain `addmm`/`matmul` path."""
    import torch

    lm = GPT2CausalLM(_backbone(dropout=dropout))
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(0, 100, (2, 12)))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False

    def loss_and_gradients():
        torch.manual_seed(0)  # the same dropout masks both times
        keras.utils.set_random_seed(0)
        logits = lm({"token_ids": ids, "padding_mask": mask}, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(
            ids[:, 1:], logits[:, :-1], from_logits=True
        ).mean()
        variables = [v.value for v in lm.trainable_variables]
        return [loss.detach(), *torch.autograd.grad(loss, variables)]

    got = loss_and_gradients()
    # Per block: query, key, value, output, 2 MLP products; then the head;
    # each twice more in the backward pass (inputs and kernel).
    assert len(products) == 3 * (6 * 2 + 1)
    products.disable()
    expected = loss_and_gradients()
    assert len(products) == 3 * (6 * 2 + 1)  # none more
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [None, "contiguous", "strided"])
def test_one_row_products_over_column_halves_equal_addmm(monkeypatch, bias):
    import torch

    (x, stored, *b), _ = _operands(2, 98, "kernel", bias, requires_grad=False)
    b = b[0] if b else None
    reference = x @ stored if b is None else torch.addmm(b, x, stored)
    batched = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a: batched.append(1) or torch.Tensor.baddbmm(*a))
    monkeypatch.setattr(torch, "bmm", lambda *a: batched.append(1) or torch.Tensor.bmm(*a))
    product = torch_matmul.kernel_product(stored, b)
    torch.testing.assert_close(product(x[:1]), reference[:1], rtol=1e-5, atol=1e-5)
    assert batched == [1]
    torch.testing.assert_close(product(x), reference, rtol=1e-5, atol=1e-5)
    assert batched == [1]  # two rows: one oneDNN product


def test_column_halves_only_for_contiguous_float32_kernels_with_even_outputs():
    import torch

    halves = torch_matmul._one_row_over_column_halves
    assert halves(torch.ones(8, 6), None) is not None
    assert halves(torch.ones(8, 7), None) is None  # odd outputs
    assert halves(torch.ones(6, 8).t(), None) is None  # a transposed table (the LM head)
    assert halves(torch.ones(8, 6, dtype=torch.bfloat16), None) is None


@pytest.mark.parametrize("dtype, uses_onednn", [("float32", True), ("bfloat16", False)])
def test_generation_products_on_onednn_for_float32(products, monkeypatch, dtype, uses_onednn):
    halves = []
    original = torch_matmul._one_row_over_column_halves

    def counted(kernel, bias):
        product = original(kernel, bias)
        return product and (lambda row: halves.append(1) or product(row))

    monkeypatch.setattr(torch_matmul, "_one_row_over_column_halves", counted)
    lm = GPT2CausalLM(_backbone(dtype=dtype))
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}
    got = lm.generate(prompt, stop_token_ids=None)
    # 6 products per block in the prefill pass, then 2 one-row steps: the
    # blocks' products over column halves, the LM head (a transposed table) on oneDNN.
    assert len(products) == ((6 * 2 + 2) if uses_onednn else 0)
    assert len(halves) == (2 * 6 * 2 if uses_onednn else 0)
    if uses_onednn:
        products.disable()
        np.testing.assert_array_equal(lm.generate(prompt, stop_token_ids=None)["token_ids"],
                                      got["token_ids"])


@pytest.mark.parametrize("int_mm,amx", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rows,terms", [(1, 64), (3, 64), (2, 3072), (0, 64)])
def test_int8_products_are_exact_int32_sums(monkeypatch, int_mm, amx, transposed, rows, terms):
    """Every way (`torch._int_mm` rows first, or kernel first as on AMX;
    float32 products in blocks of columns, the contraction split past 1040
    terms) gives the exact sums, even saturated ones far beyond float32's
    2**24."""
    import torch

    monkeypatch.setattr(torch_matmul, "int8_on_int_mm", lambda: int_mm)
    monkeypatch.setattr(torch_matmul, "on_amx", lambda: amx)
    monkeypatch.setattr(torch_matmul, "_FLOAT_BLOCK_ELEMENTS", 8 * terms)  # 8 columns a block
    generator = torch.Generator().manual_seed(rows + terms)
    x = torch.randint(-127, 128, (rows, terms), dtype=torch.int8, generator=generator)
    kernel = torch.randint(-127, 128, (terms, 37), dtype=torch.int8, generator=generator)
    if rows:  # row 0, column 0: an odd sum of `terms` saturated products
        x[0] = 127
        kernel[:, 0] = 127
        kernel[0, 0] = 126
    stored = kernel.t().contiguous() if transposed else kernel  # a tied table is (vocab, hidden)
    products = torch_matmul.int8_products(x, stored, transposed=transposed)
    assert products.dtype == torch.int32 and products.is_contiguous()
    expected = x.long() @ kernel.long()
    np.testing.assert_array_equal(products.long().numpy(), expected.numpy())
    if rows and terms == 3072:
        assert expected[0, 0] > 2**25  # float32 holds only multiples of 4 there


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("amx", [False, True])
def test_bfloat16_products_equal_addmm_either_way_round(monkeypatch, rows, bias, amx):
    """bfloat16 without gradients: a column-major kernel goes first on AMX
    (`(kernel.T @ rows.T).T`), a row-major one never; both equal `addmm` in
    float32 within bfloat16 rounding, returned row-major (a strided result
    sent the attention after it to SDPA's slow path)."""
    import torch

    monkeypatch.setattr(torch_matmul, "on_amx", lambda: amx)
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn((rows, 96), generator=generator).bfloat16()
    stored = torch.randn((40, 96), generator=generator).bfloat16()  # (out, in): column-major kernel
    b = torch.randn((40,), generator=generator).bfloat16() if bias else None
    expected = x.float() @ stored.float().t() + (b.float() if bias else 0)
    for kernel in (stored.t(), stored.t().contiguous()):
        got = torch_matmul.matmul(x, kernel, b)
        assert got.shape == (rows, 40) and got.dtype == torch.bfloat16
        assert got.is_contiguous()
        torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=0.1)
    assert torch_matmul._kernel_first(stored.t()) == amx
    assert not torch_matmul._kernel_first(stored.t().contiguous())
