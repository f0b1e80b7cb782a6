"""`xlmkit qa`: the command line of xlmkit.tasks.qa_task.zero_shot_qa (extractive QA, XQuAD zero-shot)."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_model_and_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_config_arguments(parser, pooling=False, model_help=(
        "pretrained run directory (fine-tuned on the training language), or a QA model directory written by "
        "this command (OUT/model: tested only)"))
    parser.add_argument("--data", required=True, help="directory of xquad.<lang>.json files (SQuAD v1.1 format)")
    parser.add_argument("--out", required=True, help="output directory: model/ and xquad.json + xquad.md")
    parser.add_argument("--langs", default=None, help="comma-separated languages to test (default: every file)")
    parser.add_argument("--train-lang", default="en", help="language whose questions train (default: en)")
    parser.add_argument("--train-articles", type=int, default=32, help="training articles, from the first (32)")
    parser.add_argument("--test-articles", type=int, default=16, help="test articles, from the last (16)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="ids per window, question included (default: min(384, model.max_positions))")
    parser.add_argument("--stride", type=int, default=128, help="context tokens shared by consecutive windows")
    parser.add_argument("--max-question-tokens", type=int, default=64, help="questions are cut to this many tokens")
    parser.add_argument("--max-answer-tokens", type=int, default=30, help="longest answer span decoded, in tokens")
    parser.add_argument("--n-best", type=int, default=20, help="start and end candidates per window")
    parser.add_argument("--skip-misaligned", action="store_true",
                        help="drop and count answers whose text is not at their answer_start (default: error)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the fine-tuning in OUT/model from its newest checkpoint (same settings)")
    parser.add_argument("--export-hf", default=None, metavar="DIR",
                        help="also write the QA model as a transformers directory (XLMRobertaForQuestionAnswering "
                             "without language embeddings, else XLMForQuestionAnsweringSimple; needs xlmkit[hf])")


def run(args: argparse.Namespace) -> int:
    from xlmkit.cli.options import comma_list
    from xlmkit.tasks.qa_task import zero_shot_qa

    table = zero_shot_qa(args.model, args.data, args.out, train_lang=args.train_lang,
                 langs=comma_list(args.langs) if args.langs else None, train_articles=args.train_articles,
                 test_articles=args.test_articles, which=args.which, config=args.config, overrides=args.overrides,
                 unknown_lang_id=args.unknown_lang_id, skip_misaligned=args.skip_misaligned, max_len=args.max_len,
                 stride=args.stride, max_question_tokens=args.max_question_tokens,
                 max_answer_tokens=args.max_answer_tokens, n_best=args.n_best, resume=args.resume)
    if args.export_hf:
        from xlmkit.interop.hf_qa import export_qa

        out = export_qa(table["meta"]["qa_model"], args.export_hf)
        print(f"[qa] transformers QA model in {out}")
    return 0
