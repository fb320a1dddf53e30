"""The quality benchmark of the VAEs of issue 26: MIG on dSprites over seeds, and test NLL on Fashion-MNIST.

    python benchmarks/disentanglement.py                                   # both parts, the defaults below
    python benchmarks/disentanglement.py --part mig --steps 3000 --seeds 0 1 2
    python benchmarks/disentanglement.py --part nll --data_dir ../shared/data --epochs 30 --nll_samples 1000
    python benchmarks/disentanglement.py --part gap --data_dir ../shared/data --epochs 30 --gap_epochs 10

``mig``: the VAE, beta-TCVAE (``tc_weight`` 6) and FactorVAE (``tc_weight`` 35) trained on dSprites drawn from its
factors for ``--steps`` steps of batch 64 per seed, each scored by MIG (and DCI disentanglement) on ``--points``
random samples of the grid; printed per seed and as mean +- sample std over the seeds. The latent traversals of the
first seed's models go to ``<root>/<model>.png``.

``nll``: every VAE of the family trained with the shared 784-200-200-50 protocol of ``docs/family.md`` (MLP, latent
50, Adam lr 1e-3 eps 1e-4, batch 128, dynamically binarized Fashion-MNIST, seed 42 or each of ``--nll_seeds``) for
``--epochs`` epochs, then ``test/nll``: the importance-weighted bound with ``--nll_samples`` samples on the test images
(the first ``--test_images`` of them), nats per image, per seed and as mean +- sample std, beside the negative ELBO
(``test/recon + test/kl``, one posterior sample per image: not ``test/loss``, which adds the regularizers of
beta-TCVAE, DIP-VAE or InfoVAE; for the IAF VAE and VampPrior with their KL estimates). The default sizes are
CPU-sized; the published protocol is 30 epochs and 1000 samples on all 10,000 test images.

``gap``: the inference gap on a fixed decoder (Cremer et al. 2018): a VAE trained as in ``nll``, then its decoder
frozen while a posterior trains ``--gap_epochs`` more epochs, its own Gaussian encoder and the IAF posterior
(``--flow_steps``, ``--flow_hidden_dims``, ``--forget_bias``) started from it; each one's NLL, -ELBO and their
difference, per seed of ``--nll_seeds``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

from ae_lightning import DIPVAE, IAFVAE, VAE, BetaTCVAE, FactorVAE, InfoVAE, VampPriorVAE
from ae_lightning.blocks import networks
from ae_lightning.blocks.flows import InverseAutoregressiveFlow
from ae_lightning.cli import run_command
from ae_lightning.evaluation import disentanglement
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.evaluation.visualization import save_png
from datamodules import DSpritesDataModule, FashionMNISTDataModule

ROOT = Path(__file__).parents[1]


class SampledKLVAE(VAE):
    """The VAE trained on the single-sample KL ``log q(z | x) - log p(z)`` instead of the closed form: what the
    sampling noise of a KL estimate costs (the ``vae_sampled_kl`` row of the nll part)."""

    closed_form_kl = False


class OwnContextIAFVAE(IAFVAE):
    """The IAF VAE whose flow reads an encoder output ``h`` of its own (``CONTEXT_DIM`` more encoder outputs beside
    the mean and log-variance), with the gradient flowing back through it, as in Kingma et al. 2016: the
    ``iaf_own_context`` row of the nll part, a diagnostic (the shipped model reads ``[mu, log sigma^2]``, detached)."""

    CONTEXT_DIM = 100

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        hp = self.hparams
        self.flow = InverseAutoregressiveFlow(
            self.latent_dim, hp.flow_steps, hp.flow_hidden_dims, hp.forget_bias, self.CONTEXT_DIM
        )

    def build_encoder(self) -> torch.nn.Module:
        hp = self.hparams
        return networks.build_encoder(
            hp.network, self.input_shape, hp.hidden_dims, 2 * self.latent_dim + self.CONTEXT_DIM
        )

    def posterior_parameters(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar, self._h = self.encoder(x).split([self.latent_dim, self.latent_dim, self.CONTEXT_DIM], dim=1)
        return mu, logvar

    def _context(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return self._h  # the h of the images whose mu and logvar these are: every caller reads them together


DISENTANGLING = {
    "vae": (VAE, {}),
    "beta_tcvae": (BetaTCVAE, {"tc_weight": 6.0}),
    "factor_vae": (FactorVAE, {"tc_weight": 35.0, "discriminator_hidden_dims": [256, 256]}),
}
LIKELIHOOD = {
    "vae": (VAE, {}),
    "beta_tcvae": (BetaTCVAE, {"tc_weight": 6.0}),
    "factor_vae": (FactorVAE, {"tc_weight": 6.0, "discriminator_hidden_dims": [256, 256]}),
    "dip_vae_i": (DIPVAE, {"dip_type": "i"}),
    "dip_vae_ii": (DIPVAE, {"dip_type": "ii"}),
    "info_vae": (InfoVAE, {}),
    "vampprior": (VampPriorVAE, {"num_pseudo_inputs": 500}),
    "iaf_vae": (IAFVAE, {"flow_steps": 2, "flow_hidden_dims": [256, 256]}),
    "vae_sampled_kl": (SampledKLVAE, {}),
    "iaf_own_context": (OwnContextIAFVAE, {"flow_steps": 2, "flow_hidden_dims": [256, 256]}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["mig", "nll", "gap", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the dSprites runs")
    parser.add_argument("--steps", action=AtLeast, default=3000, help="training steps (batch 64) per dSprites run")
    parser.add_argument("--latent_dim", action=AtLeast, default=10, help="code size on dSprites")
    parser.add_argument("--hidden_dims", action=AtLeast, nargs="+", default=[512, 256], help="MLP widths on dSprites")
    parser.add_argument("--points", action=AtLeast, least=10, default=10000, help="samples MIG sees")
    parser.add_argument("--models", nargs="+", default=None, help="models of the nll part (default: all)")
    parser.add_argument("--nll_seeds", type=int, nargs="+", default=[42], help="seeds of the nll part")
    parser.add_argument("--flow_steps", action=AtLeast, default=2, help="IAF steps of the nll part's iaf_vae")
    parser.add_argument("--flow_hidden_dims", action=AtLeast, nargs="+", default=[256, 256], help="its MADEs' widths")
    parser.add_argument("--forget_bias", type=float, default=1.5, help="its IAF steps' gate bias")
    parser.add_argument("--kl_warmup_steps", action=AtLeast, least=0, default=0, help="the nll part's KL warm-up, for "
                        "every model (0: none, the shared protocol)")  # fmt: skip
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"), help="Fashion-MNIST's root")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of the nll part (fractions allowed)")
    parser.add_argument("--gap_epochs", type=float, default=10.0, help="epochs of the gap part's posteriors "
                        "on the frozen decoder")  # fmt: skip
    parser.add_argument("--optimal_images", action=AtLeast, least=0, default=0, help="test images of the gap part's "
                        "best Gaussian per image (0: none)")  # fmt: skip
    parser.add_argument("--nll_samples", action=AtLeast, default=100)
    parser.add_argument("--test_images", action=AtLeast, default=1000, help="test images of the nll and gap parts, "
                        "in whole batches of 128 (1000: 896; 10000: 9,984)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "disentanglement")
    args = parser.parse_args(argv)
    unknown = [name for name in args.models or [] if name not in LIKELIHOOD]
    if unknown:
        parser.error(f"--models {' '.join(unknown)}: unknown; the models are {', '.join(LIKELIHOOD)}")
    for name in ("epochs", "gap_epochs"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} {getattr(args, name)}: expected a number of epochs above 0")
    return args


def trainer(root: Path, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def mig_part(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in DISENTANGLING}
    for seed in args.seeds:
        for name, (cls, extra) in DISENTANGLING.items():
            L.seed_everything(seed, verbose=False)
            data = DSpritesDataModule(batch_size=64, seed=seed)
            model = cls(input_shape=(1, 64, 64), latent_dim=args.latent_dim, hidden_dims=args.hidden_dims, **extra)
            start = time.perf_counter()
            trainer(args.root, max_steps=args.steps, limit_val_batches=0).fit(model, datamodule=data)
            seconds = time.perf_counter() - start
            scores = disentanglement.disentanglement_metrics(
                disentanglement.model_encoder(model), data, ["mig", "dci"], num_points=args.points, seed=seed
            )
            row = {"mig": scores["mig"], "dci_disentanglement": scores["dci_disentanglement"], "seconds": seconds}
            if seed == args.seeds[0]:  # a look at what each code dimension does
                factors = data.sample_factors(2, torch.Generator().manual_seed(seed))
                args.root.mkdir(parents=True, exist_ok=True)
                save_png(disentanglement.latent_traversals(model, data.images_of(factors)), args.root / f"{name}.png")
            results[name].append(row)
            print(f"seed {seed} {name:<11} MIG {row['mig']:.4f}  DCI-D {row['dci_disentanglement']:.4f}  "
                  f"({seconds:.0f} s)", flush=True)  # fmt: skip
    print(f"\n### MIG on dSprites ({args.steps} steps of batch 64, seeds {args.seeds}, {args.points} points)\n")
    print("| model | MIG mean +- std | DCI disentanglement mean +- std | per seed MIG |")
    print("| --- | --- | --- | --- |")
    for name, rows in results.items():
        migs, dcis = [row["mig"] for row in rows], [row["dci_disentanglement"] for row in rows]
        per_seed = ", ".join(f"{value:.4f}" for value in migs)
        print(f"| {name} | {_spread(migs)} | {_spread(dcis)} | {per_seed} |")
    return results


def protocol_model(cls: type, extra: dict[str, object], args: argparse.Namespace) -> VAE:
    """A model of the shared 784-200-200-50 protocol (Adam lr 1e-3 eps 1e-4)."""
    optimizer = lambda parameters: torch.optim.Adam(parameters, lr=1e-3, eps=1e-4)  # noqa: E731
    return cls(latent_dim=50, hidden_dims=[200, 200], nll_samples=args.nll_samples, optimizer=optimizer,
               kl_warmup_steps=args.kl_warmup_steps, **extra)  # fmt: skip


def fit_and_test(model: VAE, epochs: float, args: argparse.Namespace) -> dict[str, float]:
    """Train ``model`` for ``epochs`` (a fraction: that share of the last epoch's batches) on dynamically binarized
    Fashion-MNIST; its test metrics, with ``steps`` (the optimizer steps it took) and ``test_images`` (the test
    images scored: the whole batches of 128 in ``--test_images``, at least one, at most the test split)."""
    data = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, binarize="dynamic")
    data.setup()
    batches = -(-data.split_size("train") // 128)
    fit = trainer(args.root, limit_val_batches=0, max_epochs=math.ceil(epochs), max_steps=int(epochs * batches))
    fit.fit(model, datamodule=data)
    test_batches = max(1, args.test_images // 128)
    test = trainer(args.root, limit_test_batches=test_batches).test(model, datamodule=data, verbose=False)[0]
    return {**test, "steps": fit.global_step, "test_images": min(128 * test_batches, data.split_size("test"))}


def nll_part(args: argparse.Namespace) -> dict[str, list[float]]:
    names = args.models or list(LIKELIHOOD)
    results: dict[str, list[float]] = {name: [] for name in names}
    elbos: dict[str, list[float]] = {name: [] for name in names}  # the single-sample negative ELBO
    for seed, name in ((seed, name) for seed in args.nll_seeds for name in names):
        cls, extra = LIKELIHOOD[name]
        if name == "iaf_vae":
            extra = {**extra, "flow_steps": args.flow_steps, "flow_hidden_dims": args.flow_hidden_dims,
                     "forget_bias": args.forget_bias}  # fmt: skip
        L.seed_everything(seed, verbose=False)
        start = time.perf_counter()
        test = fit_and_test(protocol_model(cls, extra, args), args.epochs, args)
        results[name].append(test["test/nll"])
        scored = test["test_images"]
        elbos[name].append(test["test/recon"] + test["test/kl"] if "test/kl" in test else test["test/loss"])
        print(f"seed {seed} {name:<11} test/nll {test['test/nll']:.2f}  -ELBO {elbos[name][-1]:.2f}  "
              f"({test['steps']} steps, {time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    print(f"\n### Test NLL on Fashion-MNIST (784-200-200-50, {args.epochs} epochs, K = {args.nll_samples}, "
          f"{scored} test images, seeds {args.nll_seeds})\n")  # fmt: skip
    print("| model | test/nll (nats) mean +- std | minus the VAE's, per seed | per seed | -ELBO mean +- std |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in results.items():
        relative = ", ".join(f"{v - r:+.2f}" for v, r in zip(values, results["vae"])) if "vae" in results else ""
        per_seed = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {_spread(values, 2)} | {relative} | {per_seed} | {_spread(elbos[name], 2)} |")
    return results


def gap_part(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """The inference gap on a fixed decoder (Cremer et al. 2018): a VAE trained with the protocol, then its decoder
    frozen while a posterior trains ``--gap_epochs`` more epochs: the VAE's own Gaussian encoder, and the IAF
    posterior (``--flow_steps``, ``--flow_hidden_dims``) started from that encoder."""
    rows: dict[str, list[dict[str, float]]] = {"trained": [], "gaussian": [], "iaf": []}
    flow = {"flow_steps": args.flow_steps, "flow_hidden_dims": args.flow_hidden_dims, "forget_bias": args.forget_bias}
    for seed in args.nll_seeds:
        L.seed_everything(seed, verbose=False)
        vae = protocol_model(VAE, {}, args)
        rows["trained"].append(fit_and_test(vae, args.epochs, args))
        posteriors = {}
        for name, cls, extra in (("gaussian", VAE, {}), ("iaf", IAFVAE, flow)):
            L.seed_everything(seed, verbose=False)
            model = posteriors[name] = protocol_model(cls, extra, args)
            model.load_state_dict(vae.state_dict(), strict=False)  # the flow's weights are new
            model.decoder.requires_grad_(False)
            rows[name].append(fit_and_test(model, args.gap_epochs, args))
        if args.optimal_images:
            split = split_the_gap(posteriors["gaussian"], posteriors["iaf"], args.optimal_images, args)
            figures = ", ".join(f"{name} {value:.2f}" for name, value in split.items())
            print(f"seed {seed}, the first {args.optimal_images} test images, -ELBO: {figures}", flush=True)
            rows.setdefault("split", []).append(split)
        for name, tests in ((name, tests) for name, tests in rows.items() if name != "split"):
            print(f"seed {seed} {name:<9} test/nll {tests[-1]['test/nll']:.2f}  -ELBO {tests[-1]['test/loss']:.2f}  "
                  f"gap {tests[-1]['test/loss'] - tests[-1]['test/nll']:.2f}", flush=True)  # fmt: skip
    scored = rows["trained"][-1]["test_images"]
    print(f"\n### The inference gap on a fixed decoder ({args.epochs} epochs, then {args.gap_epochs} with the decoder "
          f"frozen; K = {args.nll_samples}, {scored} test images, seeds {args.nll_seeds})\n")  # fmt: skip
    print("| posterior | test/nll mean +- std | -ELBO mean +- std | -ELBO minus NLL, per seed |")
    print("| --- | --- | --- | --- |")
    for name, tests in ((name, tests) for name, tests in rows.items() if name != "split"):
        gaps = ", ".join(f"{t['test/loss'] - t['test/nll']:.2f}" for t in tests)
        nlls, losses = [t["test/nll"] for t in tests], [t["test/loss"] for t in tests]
        print(f"| {name} | {_spread(nlls, 2)} | {_spread(losses, 2)} | {gaps} |")
    return rows


def split_the_gap(gaussian: VAE, iaf: IAFVAE, images: int, args: argparse.Namespace) -> dict[str, float]:
    """On the first ``images`` test images and the posteriors' shared frozen decoder, nats per image: the NLL
    (K = ``--nll_samples``), the -ELBO of the amortized Gaussian and of the IAF (each averaged over 100 draws), and of
    the best Gaussian per image, q* of Cremer et al., its mean and log-variance optimized by Adam (lr 0.01, 500
    steps of 10 draws) from the encoder's. q* minus NLL is the Gaussian's approximation gap, the amortized minus q*
    its amortization gap."""
    data = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, binarize="dynamic")
    data.setup("test")
    batches = itertools.islice(data.test_dataloader(), math.ceil(images / 128))
    x = torch.cat([batch[0] for batch in batches])[:images]
    gaussian.eval(), iaf.eval()
    with torch.no_grad():
        mu, logvar = gaussian.posterior_parameters(x)
        nll = gaussian.importance_weighted_nll(x, args.nll_samples).mean().item()
        amortized = _negative_elbo(gaussian, x, mu, logvar, 100).mean().item()
        flow = torch.stack([sum(iaf.elbo_terms(x)) for _ in range(100)]).mean().item()
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    optimizer = torch.optim.Adam([mu, logvar], lr=0.01)
    for _ in range(500):
        optimizer.zero_grad()
        _negative_elbo(gaussian, x, mu, logvar, 10).sum().backward()
        optimizer.step()
    with torch.no_grad():
        optimal = _negative_elbo(gaussian, x, mu, logvar, 100).mean().item()
    return {"nll": nll, "amortized_gaussian": amortized, "iaf": flow, "optimal_gaussian": optimal}


def _negative_elbo(model: VAE, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, draws: int) -> torch.Tensor:
    """-ELBO per image ``[B]`` of the Gaussian ``(mu, logvar)`` on ``model``'s decoder: the reconstruction averaged
    over ``draws`` (the model's own ``log_densities``) and the KL in closed form."""
    return -model.log_densities(x, mu, logvar, draws)[0].mean(0) + model.kl_divergence(mu, logvar)


def _spread(values: list[float], digits: int = 4) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.{digits}f} +- {std:.{digits}f}"


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    print("command: python benchmarks/disentanglement.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {utc}")
    if args.part != "mig":  # Fashion-MNIST missing is named before the dSprites runs of "both", not after
        FashionMNISTDataModule(data_dir=args.data_dir).prepare_data()
    results: dict[str, object] = {}
    if args.part in ("mig", "both"):
        results["mig"] = mig_part(args)
    if args.part in ("nll", "both"):
        results["nll"] = nll_part(args)
    if args.part == "gap":
        results["gap"] = gap_part(args)
    return results


if __name__ == "__main__":
    run_command("disentanglement.py", main)
