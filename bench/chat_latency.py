"""Time to first token and tokens/s of chat replies, as a user meets them in chat.py.

A fixed eight-turn conversation (context kept, so the prompt grows) with the model's default sampling; the
medians of ChatInterface's own per-reply statistics are printed. With several --dtypes the model is loaded once
in each precision and the conversations alternate between them round by round, so the precisions are compared
in one run (the first is the reference of the speed-up column).

    python bench/chat_latency.py --model models/transformer-small
    python bench/chat_latency.py --dtypes float32 float16 bfloat16 --rounds 5
"""

import argparse
import statistics

import torch

from pocketlm.chat import ChatInterface
from pocketlm.loading import DTYPES

QUESTIONS = ["Hello!", "How are you?", "What is your favorite book?", "Tell me a joke.", "What is AI?",
             "Do you like music?", "What is a computer?", "Who are you?"]


def conversation(chat: ChatInterface, seed: int) -> list[dict]:
    """ChatInterface's statistics for each reply of the fixed conversation, from a fresh history."""
    chat.reset()
    torch.manual_seed(seed)
    stats = []
    for question in QUESTIONS:
        chat.reply(question)
        stats.append(chat.last_stats)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/transformer-small")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=1, help="conversations per precision, alternating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chats = {dtype: ChatInterface(args.model, dtype=dtype) for dtype in args.dtypes}
    stats = {dtype: [] for dtype in args.dtypes}
    for round_index in range(args.rounds):
        for dtype, chat in chats.items():
            stats[dtype] += conversation(chat, args.seed + round_index)

    first = stats[args.dtypes[0]][: len(QUESTIONS)]
    print(f"{args.model}: {len(QUESTIONS)}-turn conversation, context kept, {args.rounds} round(s), "
          f"CPU threads {torch.get_num_threads()}; medians over replies")
    print(f"first conversation in {args.dtypes[0]}: replies of {[s['new_tokens'] for s in first]} tokens, "
          f"the prompt grew to {first[-1]['prompt_tokens']} tokens")
    print(f"{'dtype':<10}{'tokens per reply':>18}{'TTFT ms':>9}{'tok/s after 1st':>17}{'tok/s whole':>13}{'speed-up':>10}")
    reference = None
    for dtype, replies in stats.items():
        answered = [s for s in replies if s["time_to_first_token"] is not None]
        after_first = statistics.median(
            (s["new_tokens"] - 1) / (s["seconds"] - s["time_to_first_token"])
            for s in answered if s["new_tokens"] > 1 and s["seconds"] > s["time_to_first_token"]
        )
        reference = reference or after_first
        print(f"{dtype:<10}{statistics.median(s['new_tokens'] for s in replies):>18.0f}"
              f"{statistics.median(s['time_to_first_token'] for s in answered) * 1000:>9.1f}"
              f"{after_first:>17.1f}{statistics.median(s['tokens_per_second'] for s in replies):>13.1f}"
              f"{after_first / reference:>9.2f}x")


if __name__ == "__main__":
    main()
