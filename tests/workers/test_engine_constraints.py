"""Constrained decoding through the engine with a real tiny model (random weights: only the mask makes its output
valid): constrained and free rows in one batch, the grammar's state across preemption, and a constraint that
does not compile failing its request alone."""

from __future__ import annotations

import json
import re
from concurrent.futures import Future

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of
from workers.engine.grammar import GrammarCompiler, GrammarError, TokenMasks, load_tokenizer
from workers.engine.sequence import Sequence
from workers.protocol import Constraint, ConstraintKind, FailureReason, FinishReason, SamplingParams, Submit
from workers.protocol import StoppingParams as Stopping

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3},
    },
    "required": ["name", "kind", "tags"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}-[0-9]{3}"
CHOICES = ["alpha", "beta", "gamma delta"]


def constrained(request_id: str, constraint: Constraint, seed: int, temperature: float = 1.0) -> Submit:
    return Submit(
        request_id=request_id,
        prompt_ids=random_prompt(5 + seed % 7, seed=seed),
        sampling=SamplingParams(temperature=temperature, seed=seed),
        stopping=Stopping(max_new_tokens=120, eos_token_ids=(0,)),
        constraint=constraint,
    )


def check(text: str, constraint: Constraint) -> None:
    match constraint.kind:
        case ConstraintKind.JSON_SCHEMA:
            jsonschema.validate(json.loads(text), json.loads(constraint.spec))
        case ConstraintKind.REGEX:
            assert re.fullmatch(constraint.spec, text), text
        case ConstraintKind.CHOICE:
            assert text in json.loads(constraint.spec), text


@pytest.fixture(scope="module")
def tokenizer(checkpoint) -> Tokenizer:
    return Tokenizer.from_file(str(checkpoint("glm") / "tokenizer.json"))


CONSTRAINTS = [
    Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA)),
    Constraint(ConstraintKind.REGEX, REGEX),
    Constraint(ConstraintKind.CHOICE, json.dumps(CHOICES)),
]


def test_constrained_and_free_rows_share_a_batch(make_engine, reference_model, submit, tokenizer) -> None:
    engine = make_engine("glm", max_batch_size=8, max_num_batched_tokens=64)
    free = [submit(f"free{i}", random_prompt(6 + i, seed=90 + i), 12) for i in range(2)]
    rows = [constrained(f"c{i}", CONSTRAINTS[i % 3], seed=i) for i in range(6)]
    deltas = run_to_end(engine, {0: [free[0], *rows[:3]], 2: [*rows[3:], free[1]]})
    model = reference_model("glm")
    for request in free:  # the mask never touches a free row
        assert tokens_of(deltas[request.request_id]) == reference(model, request.prompt_ids, 12)
    for request in rows:
        tokens = tokens_of(deltas[request.request_id])
        assert deltas[request.request_id][-1].finish.reason is FinishReason.EOS_TOKEN, request.request_id
        check(tokenizer.decode(tokens[:-1]), request.constraint)


def test_the_grammar_state_survives_preemption(make_engine, tokenizer) -> None:
    """A cache too small for the batch: requests are preempted mid-object and recomputed; greedy output is the
    same as each request's alone, and valid."""
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    requests = [constrained(f"p{i}", schema, seed=40 + i, temperature=0.0) for i in range(4)]
    alone = {}
    for request in requests:
        engine = make_engine("glm", max_batch_size=4)
        alone[request.request_id] = tokens_of(run_to_end(engine, {0: [request]})[request.request_id])
    engine = make_engine("glm", kv_cache_tokens=96, max_num_batched_tokens=32, max_batch_size=4)
    deltas = run_to_end(engine, {0: requests}, max_steps=2000)
    assert engine.scheduler.stats.num_preemptions > 0
    for request in requests:
        tokens = tokens_of(deltas[request.request_id])
        assert tokens == alone[request.request_id], request.request_id
        check(tokenizer.decode(tokens[:-1]), schema)


def test_max_tokens_mid_object_ends_with_length(make_engine) -> None:
    engine = make_engine("glm")
    request = constrained("short", CONSTRAINTS[0], seed=3)
    request = Submit(
        request.request_id,
        request.prompt_ids,
        request.sampling,
        Stopping(max_new_tokens=4, eos_token_ids=(0,)),
        constraint=request.constraint,
    )
    deltas = run_to_end(engine, {0: [request]})["short"]
    assert deltas[-1].finish.reason is FinishReason.MAX_NEW_TOKENS
    assert len(tokens_of(deltas)) == 4


@pytest.mark.parametrize(
    "constraint",
    [
        Constraint(ConstraintKind.REGEX, "[a-z"),
        Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "no-such-type"}'),
        Constraint(ConstraintKind.GRAMMAR, "start: undefined_rule"),
    ],
)
def test_a_constraint_that_does_not_compile_fails_its_request_alone(make_engine, submit, constraint) -> None:
    engine = make_engine("glm")
    bad = constrained("bad", constraint, seed=1)
    good = submit("good", random_prompt(5, seed=2), 4)
    deltas = run_to_end(engine, {0: [bad, good]})
    [failure] = engine.pop_failures()
    assert failure.request_id == "bad" and failure.reason is FailureReason.INVALID_PARAMETER
    assert "constraint" in failure.message
    assert len(tokens_of(deltas["good"])) == 4


def test_masks_cover_logits_wider_than_the_vocabulary(checkpoint) -> None:
    """A model whose logits have more ids than its tokenizer: the extra ids are banned, free rows untouched."""
    text = Tokenizer.from_file(str(checkpoint("glm") / "tokenizer.json"))
    tokenizer_vocab = text.get_vocab_size()
    width = tokenizer_vocab + 70  # not a multiple of 32 either
    compiler = GrammarCompiler.for_checkpoint(checkpoint("glm"), width)
    masks = TokenMasks(max_batch_size=4, vocab_size=width, device=torch.device("cpu"))
    rows = [Sequence.from_submit(make_submit(f"r{i}", (5, 6), eos_token_ids=(0,)), 0.0) for i in range(3)]
    for slot, seq in enumerate(rows):
        seq.slot = slot
    rows[0].grammar = compiler.state(Constraint(ConstraintKind.REGEX, "[a-z]+"))
    rows[2].grammar = compiler.state(Constraint(ConstraintKind.JSON_OBJECT))
    logits = torch.zeros(3, width)
    masked = masks.apply(masks.start(rows), logits, rows)
    allowed = masked > float("-inf")  # [3, width]
    assert allowed[1].all() and not allowed[0, tokenizer_vocab:].any() and not allowed[2, tokenizer_vocab:].any()
    assert not allowed[0, 0] and not allowed[2, 0], "EOS before the grammar may end"
    assert 0 < allowed[0].sum() < tokenizer_vocab
    firsts = [text.decode([i]) for i in allowed[0].nonzero()[:, 0].tolist()]
    assert all(re.fullmatch("[a-z]+", token) for token in firsts), firsts
    objects = [text.decode([i]) for i in allowed[2].nonzero()[:, 0].tolist()]
    assert objects and all(token.startswith("{") for token in objects), objects
    assert (logits == 0).all(), "the raw logits stay for log-probabilities"


def test_compiled_grammars_are_cached_and_bounded(checkpoint) -> None:
    text = Tokenizer.from_file(str(checkpoint("glm") / "tokenizer.json"))
    tokenizer: Future = Future()
    tokenizer.set_result(load_tokenizer(checkpoint("glm"), text.get_vocab_size()))
    compiler = GrammarCompiler(tokenizer, capacity=2)
    first, again = (compiler.state(Constraint(ConstraintKind.REGEX, "a+")) for _ in range(2))
    assert first.matcher is not again.matcher, "each request gets its own copy"
    first.sync([text.token_to_id("a")])
    assert first.matcher.is_accepting() and not again.matcher.is_accepting()
    for pattern in ("b+", "c+"):
        compiler.state(Constraint(ConstraintKind.REGEX, pattern))
    assert [spec for _, spec in compiler._cache] == ["b+", "c+"]  # "a+" was the least recently used


def test_a_tokenizer_llguidance_cannot_read_fails_requests_not_the_worker(tmp_path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    compiler = GrammarCompiler.for_checkpoint(tmp_path, 64)
    with pytest.raises(GrammarError, match="cannot be used for constraints"):
        compiler.state(Constraint(ConstraintKind.REGEX, "a"))
    with pytest.raises(GrammarError, match=r"no tokenizer\.json"):
        GrammarCompiler.for_checkpoint(tmp_path / "none", 64).state(Constraint(ConstraintKind.REGEX, "a"))
