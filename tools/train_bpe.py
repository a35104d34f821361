"""Trains mmjax's embedded BPE vocabulary from the project's own caption text.

    python tools/train_bpe.py

writes mmjax/data/raw/bpe/digits_merges.txt (CLIP's merges format) and a
README.md beside it that records this command. The corpus is every distinct
text the digits data can show the text tower: each caption template and each
zero-shot prompt, filled with every class (name and numeral). Distinct texts,
not their frequency in a sampled split, so the vocabulary does not depend on
the caption seed. Training is deterministic: rerunning gives the same bytes.
"""
import argparse
import os
import shlex
import sys

from mmjax.data import bpe
from mmjax.data.datasets import mnist

DEFAULT_OUT_DIR = os.path.join("mmjax", "data", "raw", "bpe")
MERGES_FILE = "digits_merges.txt"

README = """\
# Embedded BPE vocabulary

`{merges_file}`: byte-level BPE merges in OpenAI CLIP's format (a header line,
then one merge "a b" per line, most frequent first), the default vocabulary of
`get_tokenizer("bpe", max_len)` (`mmjax.data.bpe.BPETokenizer`).

Made by this command, run from the repository root:

    {command}

Corpus: the {num_texts} distinct texts the digits data can produce
(`mmjax.data.datasets.mnist.CAPTION_TEMPLATES` and `ZEROSHOT_PROMPTS`, each filled with
every class name and numeral); no external data. Training merges the most
frequent adjacent pair first (ties to the smallest pair), up to {max_merges}
merges, and stops when the most frequent pair occurs fewer than {min_count} times.

Result:
- {num_merges} merges, so {vocab_size} token ids: 256 bytes, 256 bytes with `</w>`,
  {num_merges} merges, <|startoftext|> = {bos_id}, <|endoftext|> = {eot_id};
- the longest text is {longest} tokens including sot and eot ({longest_text!r}).

For CLIP's own ids (e.g. to load a pretrained CLIP text tower), pass OpenAI's
`bpe_simple_vocab_16e6.txt.gz` as the merges file instead.
"""


def corpus() -> list[str]:
    templates = dict.fromkeys(mnist.CAPTION_TEMPLATES + mnist.ZEROSHOT_PROMPTS)
    return sorted({mnist.format_caption(t, label) for t in templates for label in range(len(mnist.CLASS_NAMES))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR)
    parser.add_argument("--num_merges", type=int, default=256, help="upper bound on merges")
    parser.add_argument("--min_count", type=int, default=2, help="stop when the best pair occurs fewer times")
    args = parser.parse_args()

    texts = corpus()
    merges = bpe.train_bpe(texts, args.num_merges, min_count=args.min_count)
    os.makedirs(args.out_dir, exist_ok=True)
    merges_path = os.path.join(args.out_dir, MERGES_FILE)
    bpe.write_merges(merges_path, merges)

    tok = bpe.BPETokenizer(max_len=77, merges_path=merges_path)
    lengths = {t: len(tok.tokenize(t)) + 2 for t in texts}
    longest_text = max(texts, key=lambda t: (lengths[t], t))
    command = shlex.join(["python", "tools/train_bpe.py", *sys.argv[1:]])
    with open(os.path.join(args.out_dir, "README.md"), "w") as f:
        f.write(README.format(
            merges_file=MERGES_FILE, command=command, num_texts=len(texts), max_merges=args.num_merges,
            min_count=args.min_count, num_merges=len(merges), vocab_size=tok.vocab_size, bos_id=tok.bos_id,
            eot_id=tok.eot_id, longest=lengths[longest_text], longest_text=longest_text))
    print(f"{merges_path}: {len(merges)} merges from {len(texts)} texts, vocab_size {tok.vocab_size}, "
          f"longest {lengths[longest_text]} tokens ({longest_text!r})")


if __name__ == "__main__":
    main()
