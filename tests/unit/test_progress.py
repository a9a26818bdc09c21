"""Remote output -> log lines and tqdm progress, however the bytes arrive."""
from __future__ import annotations

import pytest

from evalkit.progress import LogLine, ProgressUpdate, StreamSplitter, parse_tqdm


@pytest.mark.parametrize("line, n, total, description, rate", [
    # with a total and a percent bar
    ("100%|██████████| 1000/1000 [00:01<00:00, 812.34it/s]", 1000, 1000, "", "812.34it/s"),
    (" 45%|████▌     | 45/100 [00:05<00:06,  8.91it/s]", 45, 100, "", "8.91it/s"),
    ("  0%|          | 0/125 [00:00<?, ?it/s]", 0, 125, "", "?it/s"),
    ("100%|##########| 10/10 [1:02:03<00:00, 4.50it/s]", 10, 10, "", "4.50it/s"),
    # without a total (upstream's KNN loops over an iterator)
    ("0it [00:00, ?it/s]", 0, None, "", "?it/s"),
    ("20it [00:00, 2793.50it/s]", 20, None, "", "2793.50it/s"),
    # with a description
    ("Extracting: 50%|█████     | 5/10 [00:01<00:01, 4.20it/s]", 5, 10, "Extracting", "4.20it/s"),
    ("文本特征: 30%|███       | 3/10 [00:01<00:02, 3.00it/s]", 3, 10, "文本特征", "3.00it/s"),
    ("Epoch 1: loss: 0.5: 10%|█         | 1/10 [00:01<00:09, 1.00it/s]", 1, 10, "Epoch 1: loss: 0.5",
     "1.00it/s"),
    # slow loops show seconds per iteration
    (" 10%|█         | 1/10 [00:03<00:27,  3.05s/it]", 1, 10, "", "3.05s/it"),
    # unit_scale suffixes
    ("1.2kit [00:10, 120.00it/s]", 1200, None, "", "120.00it/s"),
    ("100%|██████████| 1.20k/1.20k [00:10<00:00, 120it/s]", 1200, 1200, "", "120it/s"),
    ("5.00MB [00:01, 4.90MB/s]", 5_000_000, None, "", "4.90MB/s"),
])
def test_parse_tqdm_reads_the_bar(line, n, total, description, rate):
    update = parse_tqdm(line)
    assert update == ProgressUpdate(n=pytest.approx(n), total=pytest.approx(total) if total else None,
                                    description=description, rate=rate)


@pytest.mark.parametrize("line", [
    "Params:",
    "  top_k: 10",
    "  image_data: /root/autodl-tmp/datapath/datasets/Flickr30k-CN/lmdb/valid/imgs",
    "Done!",
    "Finished at [00:01] without errors",
    "step 3 [00:01] done",
    "Make inference for images...",
    "Top-k predictions are saved in valid_predictions.jsonl",
    "{'success': True, 'score': 87.5}",
    "",
    "   ",
    "100%",
    "[00:01<00:02, 1.00it/s]",
])
def test_parse_tqdm_ignores_ordinary_lines(line):
    assert parse_tqdm(line) is None


def events(stream: str, *chunks: bytes) -> list:
    splitter = StreamSplitter(stream)
    out = []
    for chunk in chunks:
        out += list(splitter.feed(chunk))
    return out + list(splitter.close())


TRANSCRIPT = ("Params:\n"
              "  top_k: 10\n"
              "  0%|          | 0/10 [00:00<?, ?it/s]\r"
              " 50%|█████     | 5/10 [00:01<00:01,  4.20it/s]\r"
              "100%|██████████| 10/10 [00:02<00:00,  4.50it/s]\n"
              "文本特征已保存到 valid_texts.txt_feat.jsonl\n"
              "Done!\n").encode("utf-8")

EXPECTED = [
    LogLine("Params:", "stderr"),
    LogLine("  top_k: 10", "stderr"),
    ProgressUpdate(0, 10, "", "?it/s"),
    ProgressUpdate(5, 10, "", "4.20it/s"),
    ProgressUpdate(10, 10, "", "4.50it/s"),
    LogLine("文本特征已保存到 valid_texts.txt_feat.jsonl", "stderr"),
    LogLine("Done!", "stderr"),
]


def test_redraws_become_progress_and_lines_become_log_lines_in_order():
    assert events("stderr", TRANSCRIPT) == EXPECTED


def test_log_lines_carry_their_stream():
    assert events("stdout", b"hello\n") == [LogLine("hello", "stdout")]


def test_any_chunking_gives_the_same_events():
    one_byte_at_a_time = [TRANSCRIPT[i:i + 1] for i in range(len(TRANSCRIPT))]
    assert events("stderr", *one_byte_at_a_time) == EXPECTED
    for cut in range(1, len(TRANSCRIPT)):
        assert events("stderr", TRANSCRIPT[:cut], TRANSCRIPT[cut:]) == EXPECTED, f"cut at byte {cut}"


def test_chunk_boundary_mid_line():
    assert events("stdout", b"Make infer", b"ence for ", b"images...\n") == [
        LogLine("Make inference for images...", "stdout")]


@pytest.mark.parametrize("cut", [1, 2])
def test_chunk_boundary_inside_a_chinese_character(cut):
    data = "图像特征提取完成\n".encode("utf-8")  # 3 bytes per character
    assert events("stdout", data[:cut], data[cut:]) == [LogLine("图像特征提取完成", "stdout")]


def test_close_flushes_a_final_unterminated_line():
    splitter = StreamSplitter("stdout")
    assert list(splitter.feed(b"first\nno newline at the end")) == [LogLine("first", "stdout")]
    assert list(splitter.close()) == [LogLine("no newline at the end", "stdout")]


def test_close_flushes_a_final_unterminated_bar():
    assert events("stderr", b"  0%|  | 0/2 [00:00<?, ?it/s]\r100%|##| 2/2 [00:00<00:00, 9.00it/s]") == [
        ProgressUpdate(0, 2, "", "?it/s"), ProgressUpdate(2, 2, "", "9.00it/s")]


def test_close_with_nothing_pending_yields_nothing():
    assert events("stdout", b"line\n") == [LogLine("line", "stdout")]
    assert events("stdout") == []


def test_blank_lines_and_crlf_are_dropped():
    assert events("stdout", b"\n\n   \r\na\r\n\n\tb  \n") == [LogLine("a", "stdout"), LogLine("\tb", "stdout")]


def test_trailing_space_is_trimmed_but_indentation_kept():
    assert events("stdout", b"    indented value   \n") == [LogLine("    indented value", "stdout")]


def test_invalid_utf8_does_not_crash():
    [line] = events("stdout", b"bad \xff byte\n")
    assert line.text.startswith("bad ") and line.text.endswith(" byte")


def test_a_warning_glued_to_a_bar_is_shown_as_its_own_line():
    # tqdm draws without a newline, so a warning printed next on stderr lands on the bar's line.
    chunk = (b"  0%|          | 0/3 [00:00<?, ?it/s]/x/dataloader.py:759: UserWarning: pin_memory\n"
             b"100%|##########| 3/3 [00:01<00:00, 2.05it/s]\n")
    events = list(StreamSplitter("stderr").feed(chunk))
    assert events == [
        ProgressUpdate(n=0, total=3, description="", rate="?it/s"),
        LogLine("/x/dataloader.py:759: UserWarning: pin_memory", "stderr"),
        ProgressUpdate(n=3, total=3, description="", rate="2.05it/s"),
    ]
