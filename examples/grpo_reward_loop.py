"""A GRPO-style loop whose reward function is a `descore serve` service.

The "video generator" here is a toy policy: for each prompt (a synthetic scene, `training/synth.py`)
it chooses how to render the clip — clean, blurred, noisy, shaky — from a softmax over those choices.
Each step it samples a GROUP of clips per prompt, sends all of them to the reward service in one
asynchronous, chunked call (`RewardClient.arewards`), turns the rewards into group-relative advantages
(GRPO: (r − mean of the group) / std of the group), and takes a policy-gradient step. A real trainer
swaps the toy policy for a video diffusion model; the reward plumbing is the same.

    descore quickstart                                   # a small trained model in ~/.cache/descore/quickstart
    descore serve ~/.cache/descore/quickstart/onnx --mode fast &
    python examples/grpo_reward_loop.py --url http://127.0.0.1:8000 --steps 12

With the quickstart model (which learned that blur and noise are worse), the policy's probability of
rendering clean clips rises: measured on 2 CPU cores with `--mode fast`, 0.17 → 0.88 in 12 steps
(blur and jitter fell to 0.01 by step 8; 72 clips scored in 4.7 s). No torch needed: numpy, PyAV and
the SDK's client.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np

from descore_sdk.client import RewardClient
from descore_sdk.training.synth import Scene, encode_mp4, realise_spec, render_frames

CHOICES = [{}, {"blur": 1}, {"blur": 2}, {"noise": 1}, {"noise": 2}, {"jitter": 2}]
NAMES = ["clean", "blur1", "blur2", "noise1", "noise2", "jitter2"]
SCENES = [Scene("circle", "red", "left to right", "gray"), Scene("square", "blue", "top to bottom", "black"),
          Scene("triangle", "green", "right to left", "white")]


def render(scene: Scene, factors: dict, seed: int, folder: Path) -> Path:
    """Encode one clip (64×64, 8 frames at 2 fps) and return its path."""
    spec = realise_spec(scene, factors, seed, num_frames=8)
    path = folder / f"clip_{seed}.mp4"
    encode_mp4(render_frames(spec, width=64, height=64, num_frames=8), path, fps=2.0)
    return path


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """(prompts, group) rewards → GRPO advantages, normalised within each prompt's group."""
    centered = rewards - rewards.mean(axis=1, keepdims=True)
    return centered / (rewards.std(axis=1, keepdims=True) + 1e-6)


async def train(url: str, steps: int, group: int, lr: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.zeros(len(CHOICES))
    client = RewardClient(url, concurrency=8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for step in range(steps):
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            actions = rng.choice(len(CHOICES), size=(len(SCENES), group), p=probs)
            clips, prompts = [], []
            for i, scene in enumerate(SCENES):
                for j in range(group):
                    clips.append(render(scene, CHOICES[actions[i, j]], seed=step * 1000 + i * 100 + j, folder=folder))
                    prompts.append(scene.prompt)
            # The reward call of the RL step: every clip of every group, concurrently, in chunks.
            rewards = (await client.arewards(clips, prompts, chunk_size=8)).reshape(len(SCENES), group)
            ok = ~np.isnan(rewards)  # a clip the service could not score gets no gradient
            advantages = np.where(ok, group_advantages(np.where(ok, rewards, np.nanmean(rewards))), 0.0)
            # REINFORCE with group-relative advantages: d log p(a) / d logits = onehot(a) − p.
            grad = np.zeros_like(logits)
            for a, adv in zip(actions.ravel(), advantages.ravel()):
                grad += adv * (np.eye(len(CHOICES))[a] - probs)
            logits += lr * grad / actions.size
            print(f"step {step:>3}: mean reward {np.nanmean(rewards):+.3f}  " + "  ".join(f"{n} {p:.2f}" for n, p in zip(NAMES, probs)))
    client.close()
    return logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--group", type=int, default=4, help="clips per prompt (the GRPO group)")
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    asyncio.run(train(args.url, args.steps, args.group, args.lr, args.seed))


if __name__ == "__main__":
    main()
