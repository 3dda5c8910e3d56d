"""Tiny VAE and prior trainings: the loss falls, resume is exact, the model folder loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldp_med.config import DataConfig, LoopConfig, ModelConfig, PriorTrainConfig, VAETrainConfig
from ldp_med.errors import InputError
from ldp_med.models.pretrained import load_pretrained
from ldp_med.training.distributed import DistInfo
from ldp_med.training.prior import train_prior
from ldp_med.training.vae import train_vae
from tests.conftest import TINY_MODEL, vae_cfg


def test_vae_loss_falls_and_folder_loads(tmp_path, cohort_dir):
    cfg = vae_cfg(cohort_dir, steps=27, checkpoint_every=27, log_every=1)
    cfg.whole_volume_steps = 2  # the last two steps see whole volumes
    folder = train_vae(cfg, tmp_path, DistInfo(), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-7:-2]) / 5
    assert last < 0.7 * first, (first, last)
    assert (tmp_path / "loss.png").stat().st_size > 0
    prior = load_pretrained(folder, with_unet=False)
    assert prior.config.vae == TINY_MODEL.vae and len(prior.config.affine) == 4
    z = prior.vae.encode_stage_2_inputs(torch.zeros(1, 1, 16, 16, 16))
    assert z.shape == (1, 2, 4, 4, 4)


def test_resume_gives_identical_weights(tmp_path, cohort_dir):
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    train_vae(vae_cfg(cohort_dir), whole, DistInfo(), progress=False)
    assert train_vae(vae_cfg(cohort_dir), pieces, DistInfo(), progress=False, stop_after=3) is None
    train_vae(vae_cfg(cohort_dir), pieces, DistInfo(), resume=True, progress=False)
    a = load_file(whole / "checkpoint" / "model.safetensors")
    b = load_file(pieces / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_prior_trains_on_cached_latents(tmp_path, cohort_dir):
    vae_folder = train_vae(vae_cfg(cohort_dir, steps=2), tmp_path / "vae", DistInfo(), progress=False)
    cfg = PriorTrainConfig(model=TINY_MODEL, loop=LoopConfig(steps=20, batch_size=2, lr=2e-3, warmup=2, checkpoint_every=20, log_every=1),
                           data=DataConfig(folder=str(cohort_dir), cache_dir=str(cohort_dir / "cache")))
    folder = train_prior(cfg, vae_folder, tmp_path / "prior", DistInfo(), progress=False)
    prior = load_pretrained(folder)
    assert prior.unet is not None and prior.config.latent_scale_factor > 0
    # the UNet sees per-channel standardised latents, and the map inverts exactly
    latents = load_file(tmp_path / "prior" / "latents.safetensors")["latents"]
    zn = prior.to_diffusion(latents)
    torch.testing.assert_close(zn.mean(dim=(0, 2, 3, 4)), torch.zeros(latents.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(zn.std(dim=(0, 2, 3, 4)), torch.ones(latents.shape[1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prior.from_diffusion(zn), latents, atol=1e-5, rtol=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "prior" / "log.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-5:]) < sum(r["loss"] for r in rows[:5])
    assert (tmp_path / "prior" / "latents.safetensors").is_file()
    support = prior.support()  # where the training images have anatomy, on the model grid
    assert support is not None and support.shape == tuple(prior.config.grid)
    assert 0 <= float(support.min()) < 0.5 < float(support.max()) <= 1


def test_training_support_is_the_fraction_of_images_with_anatomy_per_latent_cell():
    from ldp_med.training.prior import training_support

    images = torch.zeros(4, 1, 8, 12, 8)
    images[:, :, :4] = 0.5  # every image: anatomy in the first half along x
    images[:2, :, 4:6] = 0.5  # half of them: also the next two rows
    images[:, :, 6:] = 0.03  # background noise under the threshold
    s = training_support(images.half(), (2, 3, 2))
    assert s.shape == (2, 3, 2)
    torch.testing.assert_close(s[0], torch.ones(3, 2))
    torch.testing.assert_close(s[1], torch.full((3, 2), 0.25))


def test_patch_sampler_switches_to_whole_volumes():
    from ldp_med.training.vae import patch_sampler

    images = torch.rand(3, 1, 20, 24, 18).half()
    fn = patch_sampler(images, patch=8, batch_size=4, foreground_fraction=0.5, whole_from_step=10)
    g = torch.Generator().manual_seed(0)
    assert fn(g, 0)["image"].shape == (4, 1, 8, 8, 8)
    assert fn(g, 10)["image"].shape == (1, 1, 20, 24, 18)


def test_patch_sampler_pairs_noisy_with_expected_and_clean_with_itself():
    from ldp_med.training.vae import patch_sampler

    images, clean, expected = (torch.full((3, 1, 20, 24, 18), v).half() for v in (0.3, 0.1, 0.2))
    fn = patch_sampler(images, patch=8, batch_size=16, whole_from_step=10, noise_free=(clean, expected))
    g = torch.Generator().manual_seed(0)
    for step in (0, 10):
        b = fn(g, step)
        pairs = {(round(float(x.mean()), 3), round(float(t.mean()), 3)) for x, t in zip(b["image"], b["target"])}
        assert b["target"].shape == b["image"].shape and pairs <= {(0.3, 0.2), (0.1, 0.1)}
    assert len(pairs | {(round(float(x.mean()), 3), round(float(t.mean()), 3))
                        for x, t in zip(*fn(g, 0).values())}) == 2  # both kinds drawn
    assert "target" not in patch_sampler(images, patch=8, batch_size=2)(g, 0)


def test_vae_loss_measures_against_the_target():
    from ldp_med.training.vae import vae_loss

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, torch.zeros_like(x), torch.ones_like(x)

    cfg = VAETrainConfig(l1_weight=0.0, mse_weight=1.0, kl_weight=0.0)
    x = torch.zeros(1, 1, 4, 4, 4)
    assert float(vae_loss(cfg)(Identity(), {"image": x})[0]) == 0.0
    assert float(vae_loss(cfg)(Identity(), {"image": x, "target": x + 0.5})[0]) == pytest.approx(0.25)


def test_posterior_mean_decodes_the_mean_not_a_sample():
    from ldp_med.models.builders import build_vae
    from ldp_med.training.vae import vae_loss

    torch.manual_seed(0)
    vae = build_vae(TINY_MODEL.vae)
    batch = {"image": torch.rand(1, 1, 8, 12, 8)}
    with torch.no_grad():
        mu, _ = vae.encode(batch["image"])
        want = float(((vae.decode(mu) - batch["image"]) ** 2).mean())
        for mean, same in ((True, True), (False, False)):
            cfg = VAETrainConfig(model=TINY_MODEL, l1_weight=0.0, kl_weight=0.0, posterior_mean=mean)
            assert (float(vae_loss(cfg)(vae, batch)[0]) == pytest.approx(want, rel=1e-6)) is same


def test_noise_free_needs_the_synthetic_cohort(cohort_dir):
    from ldp_med.data.cohort import load_training_images

    with pytest.raises(InputError, match="noise_free"):
        load_training_images(DataConfig(folder=str(cohort_dir), noise_free=True), ModelConfig(), progress=False)


def test_sharp_renderings_and_heads_join_the_synthetic_cohort(tmp_path, cohort_dir):
    from ldp_med.data import synthetic
    from ldp_med.data.cohort import load_training_images

    model = ModelConfig(grid=synthetic.GRID)
    data = load_training_images(DataConfig(synthetic=2, sharp=1, heads=1, cache_dir=str(tmp_path / "c"),
                                           noise_free=True), model, progress=False)
    assert data.images.shape[0] == data.clean.shape[0] == data.expected.shape[0] == 4
    first = synthetic.subject_meta(synthetic.seeds("train", 1)[0])
    assert data.labels[3] == data.labels[2] == data.labels[0] == first["label"] and data.captions[2] == data.captions[0]
    assert (tmp_path / "c" / "sharp" / "index.json").is_file() and "1 mm template" in data.description
    assert (tmp_path / "c" / "heads" / "index.json").is_file() and "synthetic skull" in data.description
    assert not torch.equal(data.clean[2], data.clean[0])  # seed 0 again, rendered from the 1 mm template
    assert (data.clean[3] > 0.02).sum() > 1.3 * (data.clean[0] > 0.02).sum()  # seed 0 again, in a head
    for name in ("sharp", "heads"):
        for bad in (DataConfig(synthetic=2, cache_dir=str(tmp_path / "c"), **{name: 3}),
                    DataConfig(folder=str(cohort_dir), **{name: 1})):
            with pytest.raises(InputError, match=name):
                load_training_images(bad, model, progress=False)


def test_init_starts_from_a_model_folder(tmp_path, cohort_dir):
    first = train_vae(vae_cfg(cohort_dir, steps=2), tmp_path / "a", DistInfo(), progress=False)
    cfg = vae_cfg(cohort_dir, steps=1, lr=1e-12, warmup=1)
    second = train_vae(cfg, tmp_path / "b", DistInfo(), progress=False, init=first)
    a = load_pretrained(first, with_unet=False).vae.state_dict()
    b = load_pretrained(second, with_unet=False).vae.state_dict()
    for k in a:  # one step at lr ~0 keeps the initial weights: they came from `first`
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_decoder_only_fine_tune_keeps_the_encoder_and_lowers_the_loss(tmp_path, cohort_dir):
    first = train_vae(vae_cfg(cohort_dir, steps=4), tmp_path / "a", DistInfo(), progress=False)
    cfg = vae_cfg(cohort_dir, steps=20, checkpoint_every=20, lr=3e-3)
    cfg.decoder_only, cfg.l1_weight, cfg.kl_weight = True, 0.0, 0.0
    second = train_vae(cfg, tmp_path / "b", DistInfo(), progress=False, init=first)
    a = load_pretrained(first, with_unet=False).vae.state_dict()
    b = load_pretrained(second, with_unet=False).vae.state_dict()
    frozen = [k for k in a if k.startswith(("encoder.", "quant_conv_mu.", "quant_conv_log_sigma."))]
    trained = [k for k in a if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], b[k]) for k in trained)
    rows = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert sum(r["mse"] for r in rows[-5:]) < sum(r["mse"] for r in rows[:5])


def test_decoder_only_without_a_trained_vae_is_a_one_line_error(tmp_path, cohort_dir):
    cfg = vae_cfg(cohort_dir)
    cfg.decoder_only = True
    with pytest.raises(InputError, match="--init"):
        train_vae(cfg, tmp_path, DistInfo(), progress=False)


def test_caption_draws_stay_within_the_class():
    from ldp_med.training.prior import latent_sampler

    labels = torch.tensor([0, 1, 0, 1, 2, 0])
    context = torch.arange(6.0)[:, None, None].expand(6, 1, 3).contiguous()  # caption row i holds i
    latents = torch.arange(6.0)[:, None, None, None, None].expand(6, 2, 3, 3, 3).contiguous()  # latent i holds i

    def draw(ctx, ctx_labels):
        fn = latent_sampler(latents, labels, 64, 10, 0.0, ctx, 0.0, ctx_labels)
        batch = fn(torch.Generator().manual_seed(0), 0)
        return batch["latent"][:, 0, 0, 0, 0].long(), batch["context"][:, 0, 0].long(), batch["label"]

    image, caption, label = draw(context, None)
    assert torch.equal(image, caption)  # one fixed caption per image
    image, caption, label = draw(context, labels)
    assert torch.equal(labels[caption], label)  # captions come from the item's class...
    assert (image != caption).any()  # ...but not only from the item itself
    pool = torch.arange(9.0)[:, None, None].expand(9, 1, 3).contiguous()  # a class pool larger than the data
    pool_labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2])
    image, caption, label = draw(pool, pool_labels)
    assert torch.equal(pool_labels[caption], label)
    assert len(set(caption[label == 0].tolist())) == 3  # every wording of class 0 is drawn
    with pytest.raises(ValueError, match="no caption"):
        draw(pool[:2], pool_labels[:2])  # no caption of class 1 in the pool


def test_caption_pool_missing_a_class_is_a_one_line_input_error(tmp_path):
    from ldp_med.data.cohort import TrainingImages
    from ldp_med.errors import InputError
    from ldp_med.training.prior import _caption_context

    labels = torch.tensor([0, 1, -1])  # a folder cohort: one scan without a contrast label
    data = TrainingImages(torch.zeros(3, 1, 2, 2, 2), labels, ["a T1w scan", "a T2w scan", ""], "folder")
    cfg = PriorTrainConfig(data=DataConfig(folder=str(tmp_path)), caption_within_class=True)
    with pytest.raises(InputError, match="none for unlabelled") as err:
        _caption_context(cfg, data, labels, tmp_path / "captions.safetensors", DistInfo())
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["channel", "whiten"])
def test_latent_normalisation_gives_unit_variance_and_inverts(tmp_path, kind):
    from dataclasses import replace

    from ldp_med.models.pretrained import Prior, save_pretrained
    from ldp_med.models.builders import build_vae
    from ldp_med.training.prior import latent_normalisation

    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 1, 5, 7, 3, generator=gen)  # three channels: near copies of one field, as a shortcut VAE's
    latents = torch.cat([base + 0.05 * torch.randn(6, 1, 5, 7, 3, generator=gen) for _ in range(3)], 1) * 0.3 + 0.1
    cfg = replace(TINY_MODEL, vae=replace(TINY_MODEL.vae, latent_channels=3), **latent_normalisation(latents, kind))
    folder = save_pretrained(tmp_path / "m", cfg, build_vae(cfg.vae))  # the map survives config.json
    prior = load_pretrained(folder, with_unet=False)
    assert isinstance(prior, Prior)
    zn = prior.to_diffusion(latents)
    cov = torch.cov(zn.transpose(0, 1).reshape(3, -1))
    off = cov - torch.diag(torch.diag(cov))
    torch.testing.assert_close(torch.diag(cov), torch.ones(3), atol=1e-3, rtol=1e-3)
    if kind == "whiten":  # decorrelated as well
        assert float(off.abs().max()) < 1e-3
    else:  # standardised channels stay correlated
        assert float(off[0, 1:].abs().min()) > 0.9
    torch.testing.assert_close(prior.from_diffusion(zn), latents, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["channel", "whiten"])
def test_latent_metric_measures_the_error_in_the_vaes_units(kind):
    from dataclasses import replace

    from ldp_med.training.prior import latent_metric, latent_normalisation

    gen = torch.Generator().manual_seed(4)
    base = torch.randn(5, 1, 4, 6, 3, generator=gen)
    latents = torch.cat([base * s + 0.1 * torch.randn(5, 1, 4, 6, 3, generator=gen) for s in (1.0, 0.5, 2.0)], 1)
    norm = latent_normalisation(latents, kind)
    cfg = replace(TINY_MODEL, vae=replace(TINY_MODEL.vae, latent_channels=3), **norm)
    metric = latent_metric(cfg)
    forward = (torch.tensor(norm["latent_mixing"]) if kind == "whiten"
               else torch.diag(torch.tensor(norm["latent_channel_scale"])))
    product = metric @ forward.float()  # the normalisation undone, up to one scale
    torch.testing.assert_close(product / product[0, 0], torch.eye(3), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(metric.pow(2).sum() / 3, torch.tensor(1.0))  # a white error keeps its mean square
    if kind == "whiten":  # the first principal component outweighs the near-copy detail
        eig = torch.linalg.eigvalsh(metric.T @ metric)
        assert float(eig[-1] / eig[0]) > 50
    square = metric.T @ metric
    for floor in (0.2, 1.0):  # every direction keeps weight >= floor; floor 1 is the plain loss
        floored_metric = latent_metric(cfg, floor)
        floored = floored_metric.T @ floored_metric
        torch.testing.assert_close(floored, (1 - floor) * square + floor * torch.eye(3), atol=1e-5, rtol=1e-5)
        assert float(torch.linalg.eigvalsh(floored)[0]) >= floor - 1e-6


def test_loss_metric_floor_is_a_share():
    from ldp_med.config import PriorTrainConfig
    from ldp_med.errors import ConfigError

    with pytest.raises(ConfigError, match="loss_metric_floor"):
        PriorTrainConfig(loss_metric_floor=1.5)


def test_diffusion_loss_maps_the_error_through_the_metric():
    from ldp_med.training.prior import diffusion_loss

    cfg = PriorTrainConfig(model=TINY_MODEL)
    c = TINY_MODEL.vae.latent_channels
    gen = torch.Generator().manual_seed(5)
    batch = {"latent": torch.randn(2, c, 3, 5, 4, generator=gen), "label": torch.tensor([0, 1]),
             "noise": torch.randn(2, c, 3, 5, 4, generator=gen), "timesteps": torch.tensor([3, 700]),
             "drop": torch.tensor([False, True])}
    pred = torch.randn(2, c, 3, 5, 4, generator=gen)
    unet = lambda zt, t, class_labels: pred  # noqa: E731
    plain = diffusion_loss(cfg, 2)(unet, batch)[0]
    torch.testing.assert_close(diffusion_loss(cfg, 2, torch.eye(c))(unet, batch)[0], plain)
    weights = torch.zeros(c, c)
    weights[0, 0] = c ** 0.5  # all the weight on channel 0: the loss is channel 0's squared error, x c
    assert cfg.model.scheduler.prediction_type == "epsilon"
    target = batch["noise"]
    torch.testing.assert_close(diffusion_loss(cfg, 2, weights)(unet, batch)[0], (pred - target)[:, 0].pow(2).mean())


def test_model_folder_with_both_latent_maps_is_refused(tmp_path):
    from dataclasses import replace

    from ldp_med.errors import InputError
    from ldp_med.models.builders import build_vae
    from ldp_med.models.pretrained import save_pretrained

    c = TINY_MODEL.vae.latent_channels
    eye = tuple(tuple(float(i == j) for j in range(c)) for i in range(c))
    for i, (fields, message) in enumerate([
        ({"latent_channel_scale": (1.0,) * c, "latent_mixing": eye}, "latent_channel_scale and latent_mixing are alternatives"),
        ({"latent_mixing": tuple((1.0,) * c for _ in range(c))}, "invertible square matrix"),  # singular
        ({"latent_mixing": eye[:-1]}, "invertible square matrix"),  # not square
        ({"latent_mixing": (eye[0][:-1],) + eye[1:]}, "invertible square matrix"),  # ragged
    ]):
        folder = save_pretrained(tmp_path / f"m{i}", replace(TINY_MODEL, **fields), build_vae(TINY_MODEL.vae))
        with pytest.raises(InputError, match=message) as err:
            load_pretrained(folder, with_unet=False)
        assert "\n" not in str(err.value)
