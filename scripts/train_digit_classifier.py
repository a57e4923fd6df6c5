"""Train the digit classifier that ppgen's sample-quality scores use as feature network.

A small CNN (two 3x3 conv layers of 32 and 64 channels with max-pooling, a 64-unit feature layer,
10 logits: 220,234 parameters) trained on the 10,000 embedded binarized training digits with
random shifts of up to 2 pixels, Adam (lr 1e-3, cosine decay over 24 epochs), seed 0, one thread.
The weights are stored in float16 (about 440 KB) in ``ppgen/data/digit_classifier.pt``.

    python scripts/train_digit_classifier.py --out ppgen/data/digit_classifier.pt

On one CPU thread the run is deterministic; it takes about 5 minutes on a quiet core.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ppgen import load_dataset
from ppgen.inference.sample_quality import DigitClassifier


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ppgen/data/digit_classifier.pt"))
    parser.add_argument("--epochs", type=int, default=24)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, valid, test = (load_dataset("digits", split) for split in ("train", "valid", "test"))
    net = DigitClassifier()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    x, y = train.x.view(-1, 1, 28, 28), train.y.long()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(128):
            shift = torch.randint(-2, 3, (2,))
            xb = torch.roll(x[idx], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        net.eval()
        with torch.no_grad():
            accuracy = {name: (net(d.x.view(-1, 1, 28, 28)).argmax(-1) == d.y).float().mean().item()
                        for name, d in (("valid", valid), ("test", test))}
        print(f"epoch {epoch + 1}: valid {accuracy['valid']:.4f} test {accuracy['test']:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    torch.save({k: v.half() for k, v in net.state_dict().items()}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
