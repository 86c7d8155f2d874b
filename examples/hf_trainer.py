"""transformers.Trainer with clipdash: one line, `callbacks=[ClipdashCallback(...)]`.

    python examples/hf_trainer.py                  # then, in another terminal: clipdash watch
    clipdash ctl hf-tiny set max_norm=0.5          # steer it while it trains
    torchrun --nproc-per-node 2 examples/hf_trainer.py   # DDP: rank 0 records, all ranks obey

A tiny GPT-2 (or Llama, --model llama) built from its config class with random weights learns a
synthetic sequence task (each token is the previous one plus a per-sequence stride, modulo the
vocabulary). Nothing is downloaded; a few hundred steps take well under a minute on a CPU.
`TrainingArguments(max_grad_norm=...)` stays as users write it: clipdash takes that threshold
over and turns the Trainer's own clipping off, so the record holds the true pre-clip norms.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from clipdash.integrations.transformers import ClipdashCallback

VOCAB, SEQ_LEN = 64, 32


def tiny_model(kind: str) -> PreTrainedModel:
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN))
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN, n_embd=32,
                                      n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))


class StrideSequences(torch.utils.data.Dataset):
    """token[i+1] = token[i] + stride (mod VOCAB), with a random start and stride per sequence."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=gen)
        stride = torch.randint(1, 5, (n, 1), generator=gen)
        self.ids = (start + stride * torch.arange(SEQ_LEN)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default="hf-tiny")
    args = parser.parse_args()

    torch.manual_seed(0)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), max_steps=args.max_steps,
        per_device_train_batch_size=16, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=10,
        max_grad_norm=args.max_grad_norm, eval_strategy="steps", eval_steps=args.eval_steps,
        logging_steps=args.eval_steps, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0)
    trainer = Trainer(
        model=tiny_model(args.model), args=training_args,
        train_dataset=StrideSequences(2048, seed=0), eval_dataset=StrideSequences(128, seed=1),
        callbacks=[ClipdashCallback(name=args.name, runs_dir=args.runs_dir)])  # the one line
    trainer.train()
    if training_args.world_size > 1:  # the same steps and the same weights on every rank
        checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
        print(f"rank {training_args.process_index}: {trainer.state.global_step} steps, "
              f"parameter checksum {checksum:.15g}", flush=True)
    if trainer.is_world_process_zero():
        print(f"recorded in {args.runs_dir}/{args.name}; try `clipdash export "
              f"{args.runs_dir}/{args.name} | head`")


if __name__ == "__main__":
    main()
