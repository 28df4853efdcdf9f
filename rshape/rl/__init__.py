"""The GRPO-family RL loop and its parts: sampling, rollout, advantages, loss."""
