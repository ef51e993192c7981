"""Active learning for text classification with a Hugging Face transformer.

The datamodule pads each batch of variable-length token sequences (``collate_fn``) and the model is called
as ``model(input_ids=..., attention_mask=...)`` (``input_key=None``: every field of the batch but ``labels``);
its forward returns the Hugging Face output object, whose ``logits`` the library reads.

    python examples/text_classification.py                              # bert-base-uncased on AG News
    python examples/text_classification.py --strategy bald --rounds 10  # MC dropout over BERT's dropout
    python examples/text_classification.py --offline                    # generated corpus, tiny BERT, ~20 s on 2 cores

``--offline`` needs no download: a corpus of made-up words in 4 topics, a WordPiece tokenizer trained on
it with ``tokenizers``, and a randomly initialised 2-layer BERT of width 32. The default path downloads
the pretrained model and tokenizer (``transformers``) and the dataset (``datasets``).
"""

from __future__ import annotations

import argparse
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import lightning_al as al

STRATEGIES: dict[str, Callable[[argparse.Namespace], al.Strategy]] = {
    "entropy": lambda args: al.strategies.Entropy(),
    "bald": lambda args: al.strategies.BALD(mc_samples=args.mc_samples),
    "badge": lambda args: al.strategies.BADGE(),
    "cal": lambda args: al.strategies.CAL(),
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Defaults of the two paths; flags left unset take them.
DEFAULTS = {
    "hub": dict(
        pool_size=20_000, test_size=2_000, initial=100, query_size=100, rounds=5, epochs=3, min_steps=0, lr=2e-5
    ),
    "offline": dict(pool_size=400, test_size=200, initial=20, query_size=20, rounds=2, epochs=4, min_steps=15, lr=3e-3),
}


# ----- data --------------------------------------------------------------------------------
class TextDataset(Dataset):
    """Tokenised texts as items ``{"input_ids": LongTensor[L], "attention_mask": LongTensor[L], "labels": int}``."""

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(input_ids) != len(labels):
            raise ValueError(f"Expected one label per text, but got {len(input_ids)} texts and {len(labels)} labels.")
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in input_ids]
        self.labels = [int(label) for label in labels]

    @classmethod
    def tokenize(cls, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], max_length: int) -> TextDataset:
        """Encode ``texts`` with a Hugging Face tokenizer (``[CLS] ... [SEP]``, truncated to ``max_length``)."""
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        return cls(encoded["input_ids"], labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = self.input_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[index]}


def pad_collate(items: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Tensor]:
    """Pad the sequence fields of ``items`` to the longest in the batch; stack the rest (``labels`` as LongTensor).

    ``input_ids`` is padded with ``pad_token_id``, other sequences (``attention_mask``, ...) with 0.
    """
    batch: dict[str, Tensor] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], Tensor) and values[0].ndim == 1:
            padding = pad_token_id if key == "input_ids" else 0
            batch[key] = nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=padding)
        else:
            batch[key] = torch.as_tensor(values, dtype=torch.long)
    return batch


# ----- the offline corpus, tokenizer and model ---------------------------------------------
def _made_up_words(count: int, rng: random.Random, taken: set[str]) -> list[str]:
    syllables = ["ka", "lo", "mi", "zu", "te", "ra", "no", "vi", "sha", "po", "qui", "del", "fen", "gor", "bex"]
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def make_corpus(
    size: int,
    seed: int = 0,
    num_classes: int = 4,
    topic_words: int = 30,
    filler_words: int = 60,
    topic_rate: float = 0.3,
    min_words: int = 16,
    max_words: int = 128,
) -> tuple[list[str], list[int]]:
    """``size`` sentences and their topics (``i % num_classes``): random lengths in ``[min_words, max_words]``.

    Each topic has its own vocabulary of made-up words; a sentence draws each word from its topic's
    vocabulary with probability ``topic_rate``, else from filler words shared by all topics. The vocabularies are
    fixed (not drawn from ``seed``), so pool and test sets drawn with different seeds share them.
    """
    vocab_rng = random.Random(12345)
    taken: set[str] = set()
    vocabularies = [_made_up_words(topic_words, vocab_rng, taken) for _ in range(num_classes)]
    filler = _made_up_words(filler_words, vocab_rng, taken)
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(size):
        topic = i % num_classes
        length = rng.randint(min_words, max_words)
        words = [rng.choice(vocabularies[topic] if rng.random() < topic_rate else filler) for _ in range(length)]
        texts.append(" ".join(words))
        labels.append(topic)
    return texts, labels


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1000) -> Any:
    """A BERT-style WordPiece tokenizer trained on ``texts``, as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_bert(vocab_size: int, num_labels: int = 4, **config: Any) -> nn.Module:
    """A randomly initialised ``BertForSequenceClassification``: width 32, 2 layers, 2 heads; ``config`` overrides.

    Weights start at standard deviation 0.1 instead of BERT's 0.02: trained from scratch on a few dozen labels,
    the narrow model then learns the topics reliably (at 0.02 some training seeds leave classes unlearnt).
    """
    from transformers import BertConfig, BertForSequenceClassification

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        initializer_range=0.1,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(BertConfig(**{**settings, **config}))


def offline_data(pool_size: int, test_size: int, seed: int = 0, max_length: int = 130) -> tuple[Any, Dataset, Dataset]:
    """``(tokenizer, pool, test)``: the generated corpus, tokenised by a tokenizer trained on the pool's texts."""
    pool_texts, pool_labels = make_corpus(pool_size, seed=seed)
    test_texts, test_labels = make_corpus(test_size, seed=seed + 1_000_003)
    tokenizer = train_tokenizer(pool_texts)
    pool = TextDataset.tokenize(tokenizer, pool_texts, pool_labels, max_length)
    test = TextDataset.tokenize(tokenizer, test_texts, test_labels, max_length)
    return tokenizer, pool, test


def hub_data(args: argparse.Namespace) -> tuple[Any, nn.Module, Dataset, Dataset, int]:
    """``(tokenizer, model, pool, test, num_classes)`` from the Hugging Face hub (downloads on first use)."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = load_dataset(args.dataset)
    train, test = data["train"].shuffle(seed=args.seed), data["test"].shuffle(seed=args.seed)
    train = train.select(range(min(args.pool_size, len(train))))
    test = test.select(range(min(args.test_size, len(test))))
    num_classes = train.features[args.label_field].num_classes
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_classes)
    pool = TextDataset.tokenize(tokenizer, train[args.text_field], train[args.label_field], args.max_length)
    test_set = TextDataset.tokenize(tokenizer, test[args.text_field], test[args.label_field], args.max_length)
    return tokenizer, model, pool, test_set, num_classes


# ----- the LightningModule -----------------------------------------------------------------
class TextClassifier(L.LightningModule):
    """A Hugging Face sequence classifier trained with its own cross-entropy loss and AdamW."""

    def __init__(self, model: nn.Module, lr: float = 2e-5, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss  # cross-entropy against batch["labels"]
        self.log("train_loss", loss, batch_size=batch["labels"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


# ----- the experiment ----------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="generated corpus, local tokenizer, tiny BERT")
    parser.add_argument("--model", default="bert-base-uncased", help="Hugging Face model name")
    parser.add_argument("--dataset", default="ag_news", help="Hugging Face dataset name")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--strategy", choices=list(STRATEGIES), default="entropy")
    parser.add_argument("--mc-samples", type=int, default=10, help="BALD's MC-dropout passes")
    parser.add_argument("--pool-size", type=int, help="unlabelled pool (hub: 20000, offline: 400)")
    parser.add_argument("--test-size", type=int, help="test set (hub: 2000, offline: 200)")
    parser.add_argument("--initial", type=int, help="labels drawn at random before round 0 (hub: 100, offline: 20)")
    parser.add_argument("--query-size", type=int, help="labels per round (hub: 100, offline: 20)")
    parser.add_argument("--rounds", type=int, help="queries (hub: 5, offline: 2)")
    parser.add_argument("--epochs", type=int, help="epochs per fit (hub: 3, offline: 4)")
    parser.add_argument("--min-steps", type=int, help="steps per epoch at least (hub: 0, one pass; offline: 15)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (hub: 2e-5, offline: 3e-3)")
    parser.add_argument(
        "--max-length", type=int, default=128, help="hub path: tokens per text, [CLS] and [SEP] included"
    )
    parser.add_argument("--accelerator", default=None, help="Trainer accelerator (hub: auto, offline: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in DEFAULTS["offline" if args.offline else "hub"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.accelerator is None:
        args.accelerator = "cpu" if args.offline else "auto"
    if args.min_steps < 0:
        parser.error(f"--min-steps must be >= 0, got {args.min_steps}")
    for name in ("pool_size", "test_size", "query_size", "epochs", "batch_size", "mc_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the experiment of the command line ``argv``; returns the loop's history (one row per fit)."""
    args = parse_args(argv)
    # Lightning 2.6 itself trips a torch pytree deprecation on every fit; it says nothing about this run.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    L.seed_everything(args.seed, verbose=False)
    if args.offline:
        # max_position_embeddings 160 covers the corpus' 128 words plus [CLS] and [SEP]
        tokenizer, pool, test = offline_data(args.pool_size, args.test_size, args.seed, max_length=130)
        num_classes = 4
        network = tiny_bert(tokenizer.vocab_size, num_classes, pad_token_id=tokenizer.pad_token_id)
    else:
        tokenizer, network, pool, test, num_classes = hub_data(args)
    pad_id = tokenizer.pad_token_id or 0

    def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
        return pad_collate(items, pad_id)

    datamodule = al.ActiveDataModule(
        pool,
        test_set=test,
        initial_labelled=args.initial,
        num_classes=num_classes,
        batch_size=args.batch_size,
        eval_batch_size=64,
        min_steps_per_epoch=args.min_steps,
        collate_fn=collate,
        input_key=None,
        target_key="labels",
        seed=args.seed,
    )
    loop = al.ActiveLearningLoop(
        strategy=STRATEGIES[args.strategy](args),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator=args.accelerator),
        seed=args.seed,
        progress=False,
    )
    history = loop.run(TextClassifier(network, lr=args.lr), datamodule)
    source = "offline corpus, tiny BERT" if args.offline else f"{args.model} on {args.dataset}"
    print(f"{args.strategy} ({source}): pool {len(pool)}, test {len(test)}")
    print(f"{'round':>5}{'labelled':>10}{'test acc':>10}{'train s':>9}{'score s':>9}")
    for row in history:
        score = f"{row['score_seconds']:9.1f}" if "score_seconds" in row else f"{'-':>9}"
        print(
            f"{row['round']:>5}{row['num_labelled']:>10}{row.get('test_accuracy', float('nan')):>10.3f}"
            f"{row.get('train_seconds', 0.0):>9.1f}{score}"
        )
    return history


if __name__ == "__main__":
    main()
