"""The seed model and training in PyTorch: eager, or with torch.compile.

    .venv/bin/python -m benchmarks.peers.torch_seed --batch-size 64 [--compile] [--device cuda]

Keras semantics throughout: channels-first Conv1d with TF's 'same' padding (asymmetric for
stride 2), MaxPool 'same' stride 1 (one -inf on the right), BatchNorm momentum 0.01 (= 1 - 0.99)
and eps 1e-3, Glorot-uniform kernels and zero biases, Adam(lr 1e-3, eps 1e-7). The model outputs
logits; CrossEntropyLoss is Keras' softmax + categorical cross-entropy. The training set sits on
the device as one tensor; each epoch indexes it with a fresh permutation (last partial batch
dropped) and synchronises once, at its end.
"""

import math

import numpy as np
import torch
from torch import nn

from benchmarks.peers import common


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Keras 'same': output ceil(n / s); the odd padding element goes on the right."""
    total = max((math.ceil(length / stride) - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


class SeedCNN(nn.Sequential):
    """Input (batch, 270) -> logits (batch, 7); the layers of ser_jax.models.SeedCNN."""

    def __init__(self, filters: int = 64, kernel: int = 3, dropout: float = 0.2):
        layers: list[nn.Module] = [nn.Unflatten(1, (1, common.INPUT_LENGTH))]
        length, channels = common.INPUT_LENGTH, 1

        def conv(width: int, stride: int) -> None:
            nonlocal length, channels
            left, right = same_padding(length, kernel, stride)
            if left != right:
                layers.append(nn.ConstantPad1d((left, right), 0.0))
                left = 0
            layers.extend([nn.Conv1d(channels, width, kernel, stride, padding=left), nn.ReLU()])
            length, channels = math.ceil(length / stride), width

        def pool_and_norm() -> None:
            left, right = same_padding(length, 2, 1)
            layers.extend([nn.ConstantPad1d((left, right), -math.inf), nn.MaxPool1d(2, 1),
                           nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)])

        for width, stride in ((filters, 1), (filters, 2), (filters, 2)):
            conv(width, stride)
        pool_and_norm()
        for width, stride in ((2 * filters, 1), (2 * filters, 2)):
            conv(width, stride)
        pool_and_norm()
        conv(4 * filters, 2)
        pool_and_norm()
        layers += [nn.Dropout(dropout), nn.Flatten(), nn.Linear(channels * length, 64), nn.ReLU(),
                   nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, common.NUM_CLASSES)]
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):  # Keras' initializers
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


def count_sizes(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm running means and variances)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers()
                if name.endswith(("running_mean", "running_var")))
    return trainable, stats


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    x, y, x_test, y_test = common.make_data(args.task, args.rows, args.batch_size, args.seed)
    model = SeedCNN().to(device)
    common.check_sizes(*count_sizes(model))
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=common.LEARNING_RATE, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    x_all, y_all = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)
    steps, batch = len(y) // args.batch_size, args.batch_size
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)

    def train_epoch() -> torch.Tensor:
        model.train()
        totals = torch.zeros(3, device=device)
        order = torch.randperm(len(y), generator=generator, device=device)
        for index in order[: steps * batch].view(steps, batch):
            xb, yb = x_all[index], y_all[index]
            optimizer.zero_grad(set_to_none=True)
            logits = forward(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                totals += torch.stack([loss * batch, (logits.argmax(1) == yb).sum(),
                                       torch.tensor(float(batch), device=device)])
        return totals.cpu()  # the epoch's one synchronisation

    clock = common.EpochClock()
    for _ in range(args.epochs + 1):
        clock.start()
        loss_sum, correct, count = train_epoch().tolist()
        clock.stop()

    @torch.no_grad()
    def eval_accuracy(rows: np.ndarray, labels: np.ndarray) -> float:
        model.eval()
        logits = torch.cat([model(torch.from_numpy(rows[i:i + 512]).to(device)).cpu()
                            for i in range(0, len(rows), 512)])
        return common.accuracy(logits.numpy(), labels)

    common.report(
        "pytorch", "compile" if args.compile else "eager", args, len(y), clock,
        {"torch": torch.__version__},
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        threads=torch.get_num_threads(),
        last_epoch_loss=round(loss_sum / count, 4),
        last_epoch_accuracy=round(correct / count, 4),
        train_accuracy=round(eval_accuracy(x, y), 4),
        test_accuracy=round(eval_accuracy(x_test, y_test), 4))


if __name__ == "__main__":
    main()
