"""Other people's names in a client's English text, found by a careful heuristic, for scrubbing.

Why a heuristic and not a model: the small offline NER models (spaCy's,
say) are not on PyPI as packages the default install can depend on, and a
transformer NER model would be the download the project refuses (PyTorch,
hundreds of MB) for a step that runs before every call. The heuristic errs
towards removing: a word wrongly taken for a name costs the model a
vaguer sentence ("went to [name] on Friday"), a name missed leaves the
machine. It finds

1. a word after a relation ("my sister Maria", "my boss karen", "his wife,
   Ana"), in any case, unless it is a common word ("my sister said");
2. a capitalised word inside a sentence that is not a common word or "I"
   ("then Tom called", "at Tesco": places and brands go too);
3. a capitalised word at the start of a sentence, which could be any word,
   only when what follows makes it a person: a speech or contact verb, or
   "and I/me" ("Maria said", "Tom and I went");
4. in lower-case texting, a word before a speech or contact verb ("jake
   said", "maria texted me") or after one that takes a person ("texted
   jake", "called maria"), unless it is a common word.

English only (the word list is English); other locales get the rest of the
scrub (the client's and therapist's names, numbers, addresses, handles).
"""

from __future__ import annotations

import re
from typing import Final

REPLACEMENT: Final = "[name]"

RELATIONS: Final = frozenset(
    """
    sister brother sis bro mum mom mother dad father mam mammy mommy daddy parent parents grandma grandpa
    granny gran grandad grandmother grandfather nan nana aunt auntie aunty uncle cousin niece nephew son
    daughter kid child baby husband wife hubby partner boyfriend girlfriend bf gf fiance fiancee ex spouse
    friend mate bestie bff pal buddy colleague coworker co-worker boss manager supervisor teacher tutor
    neighbour neighbor flatmate roommate housemate landlord landlady doctor gp nurse counsellor coach
    stepmum stepmom stepdad stepson stepdaughter step-mum step-dad in-law
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
SPEECH: Final = frozenset(
    """
    said says told tells asked asks texted texts messaged rang called calls phoned emailed replied
    shouted yelled thinks thought wants wanted came come picked left visited hugged laughed cried
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
TAKES_PERSON: Final = frozenset(
    "texted messaged rang called phoned emailed met hugged visited told asked".split()  # noqa: SIM905
)
# Common English words that appear capitalised (sentence starts, emphasis) or after a relation word in
# clients' messages; never taken for a name. Not a dictionary: rules 2 and 4 accept scrubbing a rare word.
COMMON: Final = frozenset(
    """
    i i'm i've i'd i'll im ive id a an the and or but so if then than that this these those there here
    it its it's is was were be been being am are do did does done doing have has had having will would
    shall should can could may might must not no yes yeah yep nope ok okay oh ah um hmm well just only
    also too very really quite pretty bit lot lots much many more most less least some any all every each
    both either neither none nothing something anything everything someone anyone everyone nobody somebody
    anybody everybody he she they we you me him her them us my your his our their mine yours hers ours
    theirs myself yourself himself herself itself ourselves themselves who whom whose what which when where
    why how while after before during since until till because though although as at by for from in into
    of off on onto out over under up down about above below between through to with without within again
    once twice always never sometimes often usually still already even yet soon later now today tonight
    yesterday tomorrow morning afternoon evening night week weekend month year day days time times
    monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun
    january february march april june july august september october november december jan feb mar apr
    jun jul aug sep sept oct nov dec christmas easter xmas
    said says told asked texted called came went got get gets getting go goes going gone made make makes
    making took take takes taking gave give gives felt feel feels feeling feelings thought think thinks
    knew know knows saw see sees seen looked look looks wanted want wants tried try tries trying started
    start stop stopped kept keep left leave put let seemed seem seems came come comes helped help
    managed finished did didn't don't doesn't wasn't weren't isn't aren't couldn't wouldn't shouldn't
    can't cannot won't haven't hasn't hadn't ate eat drank drink slept sleep woke wake walked walk ran run
    rode ride drove drive sat sit stood stand worked work works working talked talk spoke speak wrote
    write read cried cry laughed laugh hugged shouted yelled
    good bad better worse best worst great fine nice awful terrible okay alright hard easy tough scary
    scared anxious nervous worried sad happy angry upset calm tired stressed panicky proud relieved
    embarrassed ashamed lonely overwhelmed frustrated glad sorry honestly actually basically maybe
    perhaps probably definitely first second third last next other another same new old little big
    small long short whole half most few one two three four five six seven eight nine ten
    home work school uni college office shop shops bus train car house room bed kitchen gym park
    homework task exercise record thought thoughts belief experiment session therapist therapy
    mum mom dad sister brother friend friends family partner boss kids kid son daughter husband wife
    people person guy guys girl girls man men woman women everyone
    please thanks thank hi hello hey bye lol omg idk tbh btw ngl
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

_WORD: Final = re.compile(r"[A-Za-zÀ-ÖØ-öø-ÿ][A-Za-zÀ-ÖØ-öø-ÿ'’-]*")
_SENTENCE_END: Final = re.compile(r"[.!?…\n:;]\s*$|^\s*$")


def _is_common(word: str) -> bool:
    return word.casefold().replace("’", "'") in COMMON


def find(text: str) -> list[tuple[int, int]]:
    """Spans (start, end) of the words in ``text`` taken for other people's names, by the rules above."""
    words = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(text)]
    spans: list[tuple[int, int]] = []
    for i, (start, end, word) in enumerate(words):
        if len(word) < 2 or _is_common(word):
            continue
        before = text[:start]
        prev = words[i - 1][2].casefold() if i > 0 else ""
        prev2 = words[i - 2][2].casefold() if i > 1 else ""
        nxt = words[i + 1][2].casefold() if i + 1 < len(words) else ""
        nxt2 = words[i + 2][2].casefold() if i + 2 < len(words) else ""
        # Only whitespace or a comma between this word and the previous one: "my sister, Ana".
        gap = text[words[i - 1][1] : start] if i > 0 else ""
        adjacent = i > 0 and re.fullmatch(r"\s*,?\s*", gap) is not None
        sentence_start = _SENTENCE_END.search(before) is not None
        person_follows = nxt in SPEECH or (nxt == "and" and nxt2 in ("i", "me"))
        after_relation = adjacent and (prev in RELATIONS or (prev2 in RELATIONS and prev in ("called", "named")))
        takes_person = adjacent and prev in TAKES_PERSON
        mid_sentence_capital = word[:1].isupper() and not sentence_start
        cued = (sentence_start or word.islower()) and (person_follows or takes_person)
        if after_relation or mid_sentence_capital or cued:
            spans.append((start, end))
    return spans


def scrub_names(text: str) -> str:
    """``text`` with every word :func:`find` takes for a name replaced by ``[name]``."""
    for start, end in reversed(find(text)):
        text = text[:start] + REPLACEMENT + text[end:]
    return text
