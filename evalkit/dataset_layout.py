"""What each dataset folder on the server is laid out for, looked at once per command before any
cell is made (zeroshot.scoped decides, pure): label_cn.txt beside class folders is zero-shot
classification, anything else retrieval. A few SFTP stats over the connection the evaluations
then use (pipeline.looking)."""
from __future__ import annotations

from .config import Settings
from .evaluation import SPLITS
from .zeroshot import Layout, looked_at


def look(settings: Settings, datasets: list[str]) -> dict[str, Layout]:
    """Dataset name -> its Layout, for each of DATASETS."""
    from .pipeline import looking  # the SSH side loads only when a command runs
    with looking(settings) as session:  # the evaluations' connection, opened here
        found = {}
        for dataset in dict.fromkeys(datasets):
            paths = looked_at(settings, dataset)
            has_labels = session.size_of(paths["labels"]) is not None
            folders = tuple(split for split in SPLITS if has_labels and session.size_of(paths[split]) is not None)
            found[dataset] = Layout(dataset, has_labels, folders)
        return found
