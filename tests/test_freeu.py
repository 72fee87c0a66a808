"""The published FreeU (src/free_lunch_utils.py) against our hooks (fresco.pipeline.freeu): a transcription of its
patched up-block forwards runs beside the hooked UNet on a tiny UNet whose widths (16, 32, 64, 64) repeat SD1.5's
pattern (320, 640, 1280, 1280), so the b1 and b2 cases hit the same resnets; the decoder-block inputs that FRESCO's
reference pass records (by reference) carry FreeU's in-place scaling, as they do in the published code."""
import copy

import pytest
import torch

pytest.importorskip("diffusers")

from fresco.pipeline.attention import FrescoController  # noqa: E402
from fresco.pipeline.freeu import FreeU  # noqa: E402
from fresco.models.sd import unet_config  # noqa: E402
from fresco.pipeline.optimization import DecoderHooks  # noqa: E402
from fresco.settings import FrescoSettings  # noqa: E402
from fresco_kernels import normalize_features  # noqa: E402

B1, B2, S1, S2 = 1.2, 1.4, 0.9, 0.2


def _published_fourier_filter(x_in, threshold, scale):
    x = x_in
    B, C, H, W = x.shape
    if (W & (W - 1)) != 0 or (H & (H - 1)) != 0:
        x = x.to(dtype=torch.float32)
    x_freq = torch.fft.fftn(x, dim=(-2, -1))
    x_freq = torch.fft.fftshift(x_freq, dim=(-2, -1))
    B, C, H, W = x_freq.shape
    mask = torch.ones((B, C, H, W), device=x.device)
    crow, ccol = H // 2, W // 2
    mask[..., crow - threshold:crow + threshold, ccol - threshold:ccol + threshold] = scale
    x_freq = x_freq * mask
    x_freq = torch.fft.ifftshift(x_freq, dim=(-2, -1))
    return torch.fft.ifftn(x_freq, dim=(-2, -1)).real.to(dtype=x_in.dtype)


def _published_free_up_forward(block, hi, lo, b1, b2, s1, s2):
    """register_free_crossattn_upblock2d / register_free_upblock2d's forward, with SD1.5's 1280/640 as hi/lo and
    their first halves 640/320 as hi//2, lo//2 (the rest verbatim, minus gradient checkpointing)."""
    def forward(hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                cross_attention_kwargs=None, upsample_size=None, attention_mask=None, encoder_attention_mask=None):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            for width, b, s in ((hi, b1, s1), (lo, b2, s2)):
                if hidden_states.shape[1] == width:
                    hidden_mean = hidden_states.mean(1).unsqueeze(1)
                    B = hidden_mean.shape[0]
                    hidden_max, _ = torch.max(hidden_mean.view(B, -1), dim=-1, keepdim=True)
                    hidden_min, _ = torch.min(hidden_mean.view(B, -1), dim=-1, keepdim=True)
                    hidden_mean = (hidden_mean - hidden_min.unsqueeze(2).unsqueeze(3)) / \
                        (hidden_max - hidden_min).unsqueeze(2).unsqueeze(3)
                    hidden_states[:, :width // 2] = hidden_states[:, :width // 2] * ((b - 1) * hidden_mean + 1)
                    res_hidden_states = _published_fourier_filter(res_hidden_states, threshold=1, scale=s)
            hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)
            hidden_states = resnet(hidden_states, temb)
            if attn is not None:
                hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                     cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                     encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states
    return forward


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest: one thread is faster for tiny models


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel
    cfg = unet_config(tiny=True)
    cfg.update(block_out_channels=(16, 32, 64, 64))
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg).eval().requires_grad_(False)


def _inputs(unet, hw=(16, 24)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *hw, generator=g)
    e = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return x, e


@pytest.fixture(scope="module")
def published(unet):
    """Per parameter set: the published-forward UNet's output and the decoder-block inputs it leaves behind."""
    cache = {}

    def run(params):
        key = tuple(sorted(params.items()))
        if key not in cache:
            pub = copy.deepcopy(unet)
            for block in pub.up_blocks:
                block.forward = _published_free_up_forward(block, 64, 32, **params)
            x, e = _inputs(unet)
            seen, _ = _block_inputs(pub)
            cache[key] = (pub(x, 500, encoder_hidden_states=e).sample, seen)
        return cache[key]
    return run


def _block_inputs(unet):
    """Forward pre-hooks (prepended) that keep each decoder block's input tensor by reference."""
    seen, handles = {}, []
    for i, b in enumerate(unet.up_blocks):
        def hook(m, args, kwargs, i=i):
            seen[i] = kwargs["hidden_states"]
        handles.append(b.register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
    return seen, handles


def test_hits_the_published_resnets(unet, monkeypatch):
    """b1 (the widest width) on every resnet of up 0 and up 1 and on up 2's first; b2 (half of it) on up 2's
    resnets 1-2 and up 3's first resnet: 7 and 3 scalings per UNet call, as the channel test gives in SD1.5."""
    import fresco.pipeline.freeu as fu
    calls = []
    real = fu._backbone_scale_
    monkeypatch.setattr(fu, "_backbone_scale_", lambda h, b: (calls.append((h.shape[1], b)), real(h, b)))
    hooks = FreeU(unet, b1=B1, b2=B2)
    try:
        x, e = _inputs(unet)
        unet(x, 500, encoder_hidden_states=e)
    finally:
        hooks.remove()
    assert sorted(calls) == [(32, B2)] * 3 + [(64, B1)] * 7


@pytest.mark.parametrize("params", [dict(b1=B1, b2=B2, s1=S1, s2=S2), dict(b1=1.2, b2=1.5, s1=1.0, s2=1.0)],
                         ids=["filtered", "published-values"])
def test_matches_published_freeu(unet, published, params):
    want, seen_pub = published(params)
    x, e = _inputs(unet)
    plain = unet(x, 500, encoder_hidden_states=e).sample
    seen, handles = _block_inputs(unet)
    hooks = FreeU(unet, **params)
    try:
        got = unet(x, 500, encoder_hidden_states=e).sample
    finally:
        hooks.remove()
        for h in handles:
            h.remove()
    # s = 1 skips the FFT round trip the published code makes (an identity up to rounding)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    # the in-place edit of each block's input, as the published code leaves it
    for i in range(4):
        torch.testing.assert_close(seen[i], seen_pub[i], atol=1e-5, rtol=1e-5)
    # removed: no hooks left (the plain UNet again: checked by the next test's unhooked baseline)
    assert all(not b._forward_pre_hooks for b in unet.up_blocks)
    assert all(not r._forward_pre_hooks for b in unet.up_blocks for r in b.resnets)


def test_reference_gram_sees_freeu_in_place_edit(unet, published):
    """FRESCO's reference pass (DecoderHooks in record mode) keeps the block inputs by reference, so the features
    it normalises for the Gram loss are the FreeU-scaled ones, as published (get_intraframe_paras reads the
    up_samples tuple after the UNet call)."""
    _, seen_pub = published(dict(b1=B1, b2=B2, s1=S1, s2=S2))
    x, e = _inputs(unet)
    settings = FrescoSettings(backend="reference")
    ctrl = FrescoController(settings)
    ctrl.mode, ctrl.record_features = "record", True
    freeu = FreeU(unet, b1=B1, b2=B2, s1=S1, s2=S2)
    # installed after FreeU: the decoder hooks still run first (prepended)
    dec = DecoderHooks(unet, ctrl, settings)
    seen_plain, handles = _block_inputs(unet)
    try:
        unet(x, 500, encoder_hidden_states=e)
        dec.finish_record()
    finally:
        dec.remove()
        freeu.remove()
        for h in handles:
            h.remove()
    for i in range(4):
        torch.testing.assert_close(ctrl.ref_features[i], normalize_features(seen_pub[i]), atol=1e-5, rtol=1e-5)
    # without FreeU's edit the recorded features differ: block 3's input scaled by b2 vs a plain pass
    plain_in, handles = _block_inputs(unet)
    unet(x, 500, encoder_hidden_states=e)
    for h in handles:
        h.remove()
    assert (ctrl.ref_features[3] - normalize_features(plain_in[3])).abs().max() > 1e-4


def test_bad_values(unet):
    with pytest.raises(TypeError, match="freeu b1"):
        FreeU(unet, b1="1.2")
