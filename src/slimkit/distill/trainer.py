"""The recovery trainer: fine-tune a compressed model with labels (``plain``)
or against the original model (``kd``); embedding models always learn from
the teacher's embeddings.

Options (all on ``pipeline.recipe.Finetune``): logit KD with temperature and
hard-label weight; feature (hint) distillation of chosen layer pairs through a
learned projection where widths differ; teacher outputs precomputed once when
nothing varies between epochs; early stopping on a held-out share of the
training split (the best weights are kept); a checkpoint after every epoch
from which an interrupted run resumes to the same result. Deterministic given
the seed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.context import Context, seed_everything
from ..core.errors import ConfigError, LoadError
from ..core.io import atomic_path
from ..core.progress import info, track
from ..core.data import augment_batch
from .losses import embedding_loss, kd_logit_loss, kd_loss


class _Features:
    """Forward hooks that keep the outputs of the named layers."""

    def __init__(self, model: nn.Module, names: list[str], who: str):
        self.out: dict[str, torch.Tensor] = {}
        self.hooks = []
        mods = dict(model.named_modules())
        for n in names:
            if n not in mods:
                raise ConfigError(f"feature layer {n!r} does not exist in the {who}; known: "
                                  f"{', '.join(k for k in list(mods)[1:12])}, ...")
            self.hooks.append(mods[n].register_forward_hook(self._keep(n)))

    def _keep(self, name):
        def fn(mod, args, out) -> None:
            self.out[name] = out[0] if isinstance(out, tuple) else out
        return fn

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _projection(s: torch.Tensor, t: torch.Tensor, pair) -> nn.Module:
    """A learned map from the student's feature width to the teacher's (identity when equal)."""
    if s.shape == t.shape:
        return nn.Identity()
    if s.dim() >= 3 and s.shape[2:] == t.shape[2:] and s.dim() == t.dim():  # conv features: channels in dim 1
        conv = nn.Conv1d if s.dim() == 3 else nn.Conv2d
        return conv(s.shape[1], t.shape[1], 1, bias=False)
    if s.shape[:-1] == t.shape[:-1]:
        return nn.Linear(s.shape[-1], t.shape[-1], bias=False)
    raise ConfigError(f"feature pair {pair}: student shape {tuple(s.shape)} and teacher shape {tuple(t.shape)} "
                      "differ in more than the channel width; pick layers at the same resolution")


def _fingerprint(model: nn.Module, ft, n: int) -> str:
    d = {"ft": ft.to_dict(), "n": n, "shapes": [list(p.shape) for p in model.parameters()]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _val_score(model, split, teacher, embedding: bool) -> float:
    model.eval()
    out = torch.cat([model(*x) for x, _ in split.batches(256)])
    model.train()
    if embedding:
        ref = torch.cat([teacher(*x) for x, _ in split.batches(256)])
        return float(F.cosine_similarity(out, ref, dim=-1).mean())
    return float((out.argmax(-1) == split.targets).float().mean())


def recover(model: nn.Module, ctx: Context, ft, on_step=None, extra_loss=None, checkpoint=None) -> nn.Module:
    """Fine-tune ``model`` in place per ``ft`` (a pipeline Finetune config).

    ``on_step(step, total_steps)`` runs after every optimizer step (pruning
    schedules use it to update and re-apply their masks); ``extra_loss()`` is
    added to every step's loss (sparsity penalties use it). ``checkpoint``: a
    file written after every epoch; if it exists (same model shapes and
    settings), training resumes from it."""
    data = ctx.data
    if data is None or data.train is None:
        raise ConfigError("fine-tuning needs training data; pass --data with a train split")
    teacher = ctx.teacher
    embedding = data.task == "embedding"
    if (ft.method == "kd" or embedding or ft.features) and teacher is None:
        raise ConfigError("distillation needs a teacher model in the context")
    if not embedding and data.train.targets is None and ft.method == "plain":
        raise ConfigError(f"plain fine-tuning needs labels; {data.name} has none (use method: kd)")
    seed_everything(ctx.seed)
    g = torch.Generator().manual_seed(ctx.seed)
    train, val = data.train, None
    if ft.patience:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed + 1))
        k = max(1, int(round(ft.val_fraction * len(train))))
        if len(train) - k < ft.batch_size // 4:
            raise ConfigError(f"early stopping needs more data: {len(train)} samples cannot spare {k} for validation")
        train, val = train.take(perm[k:]), train.take(perm[:k])
    n = len(train)
    aug = data.augment if ft.augment == "auto" else (None if ft.augment == "none" else ft.augment)
    if ft.mixup and (embedding or not train.inputs[0].is_floating_point()):
        raise ConfigError("mixup blends float inputs (images, signals); it does not apply to token ids")
    beta_dist = torch.distributions.Beta(ft.mixup, ft.mixup) if ft.mixup else None
    if teacher is not None:
        teacher.eval()

    pairs = [tuple(p) for p in (ft.features or [])]
    s_hooks = _Features(model, [p[0] for p in pairs], "student") if pairs else None
    t_hooks = _Features(teacher, [p[1] for p in pairs], "teacher") if pairs else None
    projections = nn.ModuleList()
    if teacher is not None and (ft.method == "kd" or embedding or pairs):
        # one dry run on two samples: output layouts must match, and the hooks see the feature widths
        x0 = tuple(t[:2] for t in train.inputs)
        with torch.no_grad():
            was = model.training
            model.eval()
            so, to = model(*x0), teacher(*x0)
            model.train(was)
        if (ft.method == "kd" or embedding) and so.shape != to.shape:
            raise ConfigError(f"teacher and student outputs differ: {tuple(to.shape)} vs {tuple(so.shape)}; "
                              "distillation needs the same output layout (e.g. the same classes)")
    if pairs:
        for sn, tn in pairs:
            projections.append(_projection(s_hooks.out[sn], t_hooks.out[tn], (sn, tn)))
        torch.manual_seed(ctx.seed)  # projections must not shift the data order's randomness

    # teacher outputs once, when nothing varies between epochs (no augmentation, no feature hooks)
    soft = None
    if ft.precompute and teacher is not None and not aug and not pairs and not ft.mixup and (ft.method == "kd" or embedding):
        with torch.no_grad():
            soft = torch.cat([teacher(*x) for x, _ in train.batches(256)])

    params = [p for p in model.parameters() if p.requires_grad] + list(projections.parameters())
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
    steps = max(1, ft.epochs * -(-n // ft.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ckpt = Path(checkpoint) if checkpoint else None
    fp = _fingerprint(model, ft, n)
    start, best, best_state, bad = 0, -float("inf"), None, 0
    if ckpt is not None and ckpt.exists():
        try:
            st = torch.load(ckpt, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"checkpoint {ckpt} is unreadable ({type(e).__name__}); delete it to start over") from None
        if st.get("fingerprint") != fp:
            raise ConfigError(f"checkpoint {ckpt} belongs to a different model or fine-tune setting; delete it or "
                              "choose another path")
        model.load_state_dict(st["model"])
        projections.load_state_dict(st["projections"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        start, best, bad = st["epoch"], st["best"], st["bad"]
        best_state = st.get("best_state")
        stage = ctx.stage
        what = f"stage {stage}" if stage else "training"
        info(f"slimkit: resuming {what} from epoch {start} of {ft.epochs} (checkpoint {ckpt})"
             + ("; it is complete, nothing left to train" if start >= ft.epochs else ""))
    model.train()
    step = start * -(-n // ft.batch_size)
    stopped = False
    status: dict = {}
    for epoch in track(range(start, ft.epochs), f"fine-tune ({ft.method})", status=status):
        perm = torch.randperm(n, generator=g)
        loss_sum, loss_n, correct = 0.0, 0, 0
        for i in range(0, n, ft.batch_size):
            idx = perm[i:i + ft.batch_size]
            x = tuple(t[idx] for t in train.inputs)
            if aug:  # the teacher sees the same augmented batch
                x = (augment_batch(x[0], aug, g),) + x[1:]
            y = None if train.targets is None else train.targets[idx]
            lam, y2 = 1.0, None
            if beta_dist is not None:  # mixup: the same blend for student, teacher and labels
                lam = float(beta_dist.sample())
                j = torch.randperm(len(idx), generator=g)
                x = (lam * x[0] + (1 - lam) * x[0][j],) + x[1:]
                y2 = None if y is None else y[j]
            out = model(*x)
            t_out = None
            if embedding or ft.method == "kd" or pairs:
                if soft is not None:
                    t_out = soft[idx]
                else:
                    with torch.no_grad():
                        t_out = teacher(*x)
            if embedding:
                loss = embedding_loss(out, t_out)
            elif ft.method == "kd" and y2 is not None:  # mixed inputs: mixed hard labels, the teacher as is
                hard = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y2)
                loss = ft.alpha * hard + (1 - ft.alpha) * kd_logit_loss(out, t_out, ft.temperature)
            elif ft.method == "kd":
                loss = kd_loss(out, t_out, y, temperature=ft.temperature, alpha=ft.alpha)
            else:
                loss = F.cross_entropy(out, y)
                if y2 is not None and lam < 1:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(out, y2)
            for proj, (sn, tn) in zip(projections, pairs):
                loss = loss + ft.beta * F.mse_loss(proj(s_hooks.out[sn]), t_hooks.out[tn])
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            loss_n += len(idx)
            if y is not None and out.ndim == 2:  # running training accuracy (the batch's own labels), for the curves
                correct += int((out.detach().argmax(-1) == y).sum())
            if on_step is not None:
                on_step(step, steps)
        score = None
        if val is not None:
            score = _val_score(model, val, teacher, embedding)
            if score > best + 1e-9:
                best, bad = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            stopped = bad >= ft.patience
        train_acc = correct / loss_n if (train.targets is not None and loss_n and not embedding) else None
        status.update(loss=loss_sum / max(1, loss_n), **({} if train_acc is None else {"acc": train_acc}),
                      **({} if score is None else {"val": score}))
        ctx.history.append({"stage": ctx.stage or "", "epoch": epoch + 1,
                            "loss": loss_sum / max(1, loss_n), "train_acc": train_acc, "val": score})
        if ctx.on_epoch is not None:
            ctx.on_epoch(model, ctx.history[-1])
        if ckpt is not None:
            st = {"fingerprint": fp, "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                  "sched": sched.state_dict(), "gen": g.get_state(), "rng": torch.get_rng_state(), "best": best,
                  "bad": bad, "best_state": best_state, "projections": projections.state_dict()}
            with atomic_path(ckpt) as tmp:
                torch.save(st, tmp)
        if stopped:
            ctx.note(f"early stopping after epoch {epoch + 1} of {ft.epochs} (held-out score {best:.4f})")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    for h in (s_hooks, t_hooks):
        if h is not None:
            h.remove()
    model.eval()
    return model

