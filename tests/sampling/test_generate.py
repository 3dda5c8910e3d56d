"""Class-conditional DDIM sampling with classifier-free guidance on a tiny untrained prior."""

from __future__ import annotations

import pytest
import torch

from ldp_med.models.builders import build_models
from ldp_med.models.pretrained import Prior
from ldp_med.models.conditioning import guided_prediction
from ldp_med.sampling.generate import decode, sample_latents
from tests.conftest import TINY_MODEL


@pytest.fixture
def prior():
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return Prior(TINY_MODEL, vae.eval(), unet.eval())


def test_samples_are_finite_shaped_and_seeded(prior):
    labels = torch.tensor([0, 3, 4])
    z1 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    z2 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    z3 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(2), progress=False)
    assert z1.shape == (3, *TINY_MODEL.latent_shape)
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    imgs = decode(prior, z1)
    assert imgs.shape == (3, *TINY_MODEL.grid) and torch.isfinite(imgs).all()
    assert imgs.min() >= 0 and imgs.max() <= 1


@torch.no_grad()
def test_guidance_combines_conditional_and_unconditional(prior):
    z = torch.randn(2, *TINY_MODEL.latent_shape)
    t = torch.tensor([10, 500])
    labels = torch.tensor([1, 2])
    null = torch.full_like(labels, 4)
    cond = prior.unet(z, t, class_labels=labels)
    uncond = prior.unet(z, t, class_labels=null)
    got = guided_prediction(prior, z, t, labels, 3.0)
    torch.testing.assert_close(got, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided_prediction(prior, z, t, labels, 1.0), cond)


def test_generate_cli_contrast_null_and_errors(tmp_path):
    import dataclasses

    import nibabel as nib
    from click.testing import CliRunner

    from ldp_med.cli import cli
    from ldp_med.models.pretrained import save_pretrained

    cfg = dataclasses.replace(TINY_MODEL, affine=tuple(tuple(float(v) for v in r) for r in torch.eye(4).tolist()))
    vae, unet = build_models(cfg)
    model = save_pretrained(tmp_path / "m", cfg, vae, unet)
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    r = run("generate", "-o", tmp_path / "g", "--contrast", "T2w", "-n", 2, "--steps", 3, "--model", model,
            "--preview", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    img = nib.load(str(tmp_path / "g" / "sample_001.nii.gz"))
    assert img.shape == TINY_MODEL.grid and (tmp_path / "p.png").is_file()
    assert run("generate", "-o", tmp_path / "u", "--steps", 3, "--model", model).exit_code == 0  # null condition
    for args in (["--contrast", "T3w"], ["--contrast", "T1w", "--prompt", "x"], ["-n", 0]):
        r = run("generate", "-o", tmp_path / "e", "--steps", 3, "--model", model, *args)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.output)
    r = run("generate", "-o", tmp_path / "g", "--contrast", "T2w", "--steps", 3, "--model", model)
    assert r.exit_code == 2 and "--force" in r.stderr
    # a request no model could serve is refused before any model is read (this folder does not exist)
    r = run("generate", "-o", tmp_path / "e", "--contrast", "T1w", "--prompt", "x", "--model", tmp_path / "none")
    assert r.exit_code == 2 and "not both" in r.stderr, r.output


@torch.no_grad()
def test_text_prior_gets_context_in_both_guidance_branches(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ldp_med.cli import cli
    from ldp_med.models.pretrained import save_pretrained
    from ldp_med.models.conditioning import prompt_context
    from tests.conftest import FAKE_DIM, FakeEncoder, text_model

    cfg = text_model()
    vae, unet = build_models(cfg)
    table = torch.nn.functional.normalize(torch.randn(5, 1, FAKE_DIM), dim=-1)
    table[4] = 0
    prior = Prior(cfg, vae.eval(), unet.eval(), {"class_context": table})
    z, t = torch.randn(2, *cfg.latent_shape), torch.tensor([10, 500])
    labels, null = torch.tensor([1, 4]), torch.full((2,), 4)
    cond = prior.unet(z, t, context=table[labels], class_labels=labels)  # labels use their class context
    uncond = prior.unet(z, t, context=torch.zeros(2, 1, FAKE_DIM), class_labels=null)
    torch.testing.assert_close(guided_prediction(prior, z, t, labels, 3.0), uncond + 3.0 * (cond - uncond),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided_prediction(prior, z, t, null, 3.0), uncond)  # null: one branch
    monkeypatch.setattr("ldp_med.models.text.load_text_encoder", lambda: FakeEncoder())
    ctx = prompt_context(prior, "T2w brain MRI", 2)  # a prompt with the null class is still guided
    cond = prior.unet(z, t, context=ctx, class_labels=null)
    torch.testing.assert_close(guided_prediction(prior, z, t, null, 5.0, ctx), uncond + 5.0 * (cond - uncond),
                               rtol=1e-4, atol=1e-5)
    lat = sample_latents(prior, null, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(0),
                         progress=False, context=ctx)
    assert lat.shape == (2, *cfg.latent_shape) and torch.isfinite(lat).all()
    # generate() samples a prompt with the class its caption classifier reads (here: T2w), else the null class.
    from ldp_med.sampling.generate import generate

    kw = dict(n=2, steps=3, guidance=3.0, seed=0, prior=prior, progress=False)
    assert torch.equal(generate(prompt="T2w brain MRI", **kw)[0], decode(prior, lat))  # no classifier: null
    prior.extras.update(caption_weight=torch.zeros(4, FAKE_DIM), caption_bias=torch.tensor([0.0, 5.0, 0.0, 0.0]))
    lat1 = sample_latents(prior, labels.new_full((2,), 1), steps=3, guidance=3.0,
                          generator=torch.Generator().manual_seed(0), progress=False, context=ctx)
    assert torch.equal(generate(prompt="T2w brain MRI", **kw)[0], decode(prior, lat1))
    # A class-only model keeps refusing prompts, with one line.
    vae, unet = build_models(TINY_MODEL)
    model = save_pretrained(tmp_path / "m", TINY_MODEL, vae, unet)
    r = CliRunner().invoke(cli, ["generate", "-o", str(tmp_path / "g"), "--prompt", "T1w", "--model", str(model)])
    assert r.exit_code == 2 and "no text conditioning" in r.stderr and len(r.stderr.strip().splitlines()) == 1
