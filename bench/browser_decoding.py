"""The exported web page in headless Chromium beside the same model in PyTorch: decoding speed, load time, bytes.

Each model (the LSTM, the small and medium presets) is built and briefly trained as `bench/runtimes.py` does, then
exported with `export.py --format web` (int8 graph, the default, and float32), served from 127.0.0.1 by a plain
static file server and opened in Debian's Chromium with every outside request aborted. Per page:

- load: from navigation to the Send button enabled (the model read and its session made), and the bytes the
  server sent for it (the page's own files, the JavaScript and WebAssembly, the model);
- decoding: the page's greedy reply of `--new-tokens` tokens to one message (the figures line it shows), round after
  round, interleaved with PyTorch's `generate()` on the same prompt ids, at 1 thread (the page runs WebAssembly on
  one: threads need cross-origin isolation, which a plain file server does not give) and at all threads.

    python bench/browser_decoding.py                       # lstm, small, medium; 3 rounds
    python bench/browser_decoding.py --models lstm --rounds 5
"""

import argparse
import http.server
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from runtimes import build  # noqa: E402

from pocketlm.chat import ChatInterface  # noqa: E402
from pocketlm.export import export  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MESSAGE = "Tell me a story."


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server`'s handler, quiet, adding up the bytes of every file it sends."""
    sent = 0

    def copyfile(self, source, outputfile):
        start = source.tell()
        super().copyfile(source, outputfile)
        CountingHandler.sent += source.tell() - start

    def log_message(self, *args):
        pass


def serve(root: Path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}/"


class PageSide:
    """One exported page, opened once: its load figures, then a greedy reply per call."""

    def __init__(self, browser, url: str, new_tokens: int):
        self.context = browser.new_context()
        self.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                           else route.abort())
        page = self.context.new_page()
        sent, started = CountingHandler.sent, time.perf_counter()
        page.goto(url)
        page.wait_for_function("!document.getElementById('send').disabled", timeout=120_000)
        self.load_seconds = time.perf_counter() - started
        self.load_bytes = CountingHandler.sent - sent
        page.click("summary")
        page.set_checked("#do_sample", False)
        for name, value in (("repetition_penalty", 1.0), ("max_new_tokens", new_tokens)):
            page.fill(f"#{name}", str(value))
            page.keyboard.press("Tab")
        self.page = page

    def __call__(self) -> tuple[float, list[int]]:
        """A reply to MESSAGE in a fresh conversation: its tokens/s as the page reports it, and its tokens."""
        page = self.page
        page.click("#reset")
        page.fill("#message", MESSAGE)
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('figures').textContent.includes('tokens/s') "
                               "&& !document.getElementById('send').disabled", timeout=300_000)
        figures = page.inner_text("#figures")
        tokens = page.query_selector_all(".turn.assistant")[-1].get_attribute("data-tokens")
        return float(re.search(r"\(([\d.]+) tokens/s\)", figures).group(1)), [int(t) for t in tokens.split(",") if t]

    def close(self):
        self.context.close()


def torch_side(model, prompt: list[int], new_tokens: int, threads: int):
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "repetition_penalty": 1.0}
    ids = torch.tensor([prompt])

    @torch.no_grad()
    def run() -> tuple[float, list[int]]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            started = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **options)[0, len(prompt):].tolist()
            return new_tokens / (time.perf_counter() - started), out
        finally:
            torch.set_num_threads(before)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lstm", "small", "medium"])
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    all_threads = torch.get_num_threads()
    print(f"greedy reply of {args.new_tokens} tokens to one chat message, headless Chromium {CHROMIUM} "
          f"(WebAssembly, 1 thread) beside PyTorch generate(); median of {args.rounds} interleaved rounds")
    print(f"{'model':<8}{'side':<32}{'tokens/s':>10}{'vs PyTorch 1 thread':>21}{'same tokens':>13}"
          f"{'load s':>8}{'MB received':>13}")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as scratch:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        scratch = Path(scratch)
        for name in args.models:
            model, _, tokenizer = build(name, scratch / name, args.vocab_size)
            # Every reply runs to its full length, as PyTorch's does with min_new_tokens.
            config_file = scratch / name / "generation_config.json"
            config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                               "min_new_tokens": args.new_tokens}))
            for precision in ("int8", "float32"):
                export(str(scratch / name), ["web"], scratch / "site" / f"{name}-{precision}",
                       web_precision=precision)
            httpd, url = serve(scratch / "site")
            prompt = ChatInterface(model, tokenizer, use_context=name != "lstm").prompt_ids(MESSAGE, args.new_tokens)
            sides = {"PyTorch, 1 thread": torch_side(model, prompt, args.new_tokens, 1),
                     f"PyTorch, {all_threads} threads": torch_side(model, prompt, args.new_tokens, all_threads)}
            pages = {f"page, {precision}": PageSide(browser, f"{url}{name}-{precision}/", args.new_tokens)
                     for precision in ("int8", "float32")}
            sides.update(pages)
            reference = sides["PyTorch, 1 thread"]()[1]
            for run in sides.values():
                run()  # warm-up
            speeds = {label: [] for label in sides}
            tokens = {}
            for _ in range(args.rounds):
                for label, run in sides.items():
                    speed, tokens[label] = run()
                    speeds[label].append(speed)
            base = statistics.median(speeds["PyTorch, 1 thread"])
            for label, measured in speeds.items():
                speed = statistics.median(measured)
                same = sum(a == b for a, b in zip(tokens[label], reference))
                load = (f"{pages[label].load_seconds:>8.2f}{pages[label].load_bytes / 1e6:>13.1f}" if label in pages
                        else "")
                print(f"{name:<8}{label:<32}{speed:>10,.0f}{speed / base:>20.2f}x{same:>9}/{len(reference)}{load}",
                      flush=True)
            for page in pages.values():
                page.close()
            httpd.shutdown()
        browser.close()


if __name__ == "__main__":
    main()
