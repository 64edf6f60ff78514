"""The data layer: text -> tokenizer -> token shards -> grain batches.

  sources.py    documents from local files and the Hugging Face hub; bad input
  prepare.py    `python -m dlm.data.prepare`: tokenizer and token shards with a manifest
  shards.py     the on-disk format: .npy shards, manifest.json, atomic writes
  pipeline.py   the grain training pipeline and the validation windows
  workdir.py    what a training run reads, found or prepared in its workdir
  synthetic.py  a Markov-chain corpus with a known entropy rate
  benchmark.py  tokenizer and loader throughput
"""

from dlm.data.pipeline import TrainBatches, eval_windows, train_dataset
from dlm.data.shards import shard_paths
from dlm.data.sources import load_documents, split_documents
from dlm.data.workdir import NotPrepared, for_training, prepared_dir, val_tokens

__all__ = ['NotPrepared', 'TrainBatches', 'eval_windows', 'for_training', 'load_documents',
           'prepared_dir', 'shard_paths', 'split_documents', 'train_dataset', 'val_tokens']
