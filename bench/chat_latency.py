"""Time to first token and tokens/s of chat replies, as a user meets them in chat.py.

A fixed eight-turn conversation (context kept, so the prompt grows) with the model's default sampling; the
medians of ChatInterface's own per-reply statistics are printed.

    python bench/chat_latency.py --model models/transformer-small
"""

import argparse
import statistics

import torch

from pocketlm.chat import ChatInterface

QUESTIONS = ["Hello!", "How are you?", "What is your favorite book?", "Tell me a joke.", "What is AI?",
             "Do you like music?", "What is a computer?", "Who are you?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/transformer-small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    chat = ChatInterface(args.model)
    stats = []
    for question in QUESTIONS:
        chat.reply(question)
        stats.append(chat.last_stats)
    answered = [s for s in stats if s["time_to_first_token"] is not None]
    after_first = [(s["new_tokens"] - 1) / (s["seconds"] - s["time_to_first_token"])
                   for s in answered if s["new_tokens"] > 1 and s["seconds"] > s["time_to_first_token"]]
    print(f"{len(stats)} replies of {[s['new_tokens'] for s in stats]} tokens; "
          f"prompt grew to {stats[-1]['prompt_tokens']} tokens")
    print(f"median time to first token: {statistics.median(s['time_to_first_token'] for s in answered) * 1000:.1f} ms")
    print(f"median tokens/s after the first token: {statistics.median(after_first):.1f}")
    print(f"median tokens/s over whole replies: {statistics.median(s['tokens_per_second'] for s in stats):.1f}")


if __name__ == "__main__":
    main()
