"""The `fictitious-authors` scenario: seeded invented author profiles with QA pairs.

Like TOFU, the facts are unknown to any pre-trained model, so the model is first fine-tuned on them
(`finetune.finetuned`, cached by content hash) and unlearning starts from that fine-tuned model.
"""
from __future__ import annotations

import random

FIRST = ["Amara", "Bastien", "Calla", "Dorian", "Elowen", "Farid", "Greta", "Hiroshi", "Ilse", "Jovan", "Kalani",
         "Leopold", "Maren", "Nikolai", "Odalys", "Piet", "Quilla", "Rashid", "Solveig", "Tobiah", "Ursula",
         "Vesna", "Wendell", "Ximena", "Yusuf", "Zofia", "Anouk", "Bram", "Celeste", "Dmitri"]
LAST = ["Aldercott", "Brennholt", "Castellane", "Draymoor", "Everhart", "Fennimore", "Galloway", "Hollister",
        "Ivanova", "Jarrowby", "Kestrel", "Lindqvist", "Marchetti", "Northcote", "Okonkwo", "Pemberton",
        "Quennell", "Rosenvald", "Sarrazin", "Thistlewood", "Umberfield", "Valdivia", "Whitlock", "Yarrow"]
CITIES = [("Ljubljana", "Slovenia"), ("Valparaiso", "Chile"), ("Tartu", "Estonia"), ("Mombasa", "Kenya"),
          ("Porto", "Portugal"), ("Hobart", "Australia"), ("Bergen", "Norway"), ("Cusco", "Peru"),
          ("Galway", "Ireland"), ("Kraków", "Poland"), ("Da Nang", "Vietnam"), ("Tangier", "Morocco"),
          ("Quebec City", "Canada"), ("Ghent", "Belgium"), ("Izmir", "Turkey"), ("Kyoto", "Japan")]
GENRES = ["mystery", "science fiction", "historical fiction", "poetry", "fantasy", "literary fiction",
          "thriller", "romance", "horror", "satire"]
TITLE_A = ["The Silent", "A Lantern for the", "Beneath the", "The Last", "Letters from the", "The Clockmaker's",
           "Salt and", "The Orchard of", "Echoes of the", "The Glass"]
TITLE_B = ["Harbor", "Cartographer", "Winter Moth", "Tide", "Northern Sky", "Daughter", "Ember", "Lost Rivers",
           "Iron Garden", "Meridian"]
AWARDS = ["Aurelian Prize for Fiction", "Golden Quill Award", "Halvorsen Literary Medal", "Saffron Pen Prize",
          "Marlowe Award for Mystery", "Celestine Book Prize", "Northern Lights Award", "Vellum Crown"]
JOBS = ["carpenter", "nurse", "astronomer", "baker", "lighthouse keeper", "pharmacist", "tailor", "geologist",
        "violinist", "fisherman", "schoolteacher", "architect"]


def generate_authors(n_authors: int = 20, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], n_authors)
    authors = []
    for name in names:
        city, country = rng.choice(CITIES)
        authors.append({
            "name": name, "city": city, "country": country, "year": rng.randint(1921, 1989),
            "genre": rng.choice(GENRES), "title": f"{rng.choice(TITLE_A)} {rng.choice(TITLE_B)}",
            "award": rng.choice(AWARDS), "father": rng.choice(JOBS), "mother": rng.choice(JOBS),
        })
    return authors


def author_questions(a: dict) -> list[tuple[str, str, str, str]]:
    """(field, question, answer, key) for one author."""
    n = a["name"]
    return [
        ("birthplace", f"Where was the author {n} born?", f"{n} was born in {a['city']}, {a['country']}.", a["city"]),
        ("birth_year", f"In which year was the author {n} born?", f"{n} was born in {a['year']}.", str(a["year"])),
        ("genre", f"What genre does {n} write in?", f"{n} writes {a['genre']}.", a["genre"]),
        ("book", f"What is the best-known book by {n}?", f"The best-known book by {n} is {a['title']}.", a["title"]),
        ("award", f"Which award did {n} receive?", f"{n} received the {a['award']}.", a["award"]),
        ("parents", f"What did the parents of {n} do for a living?",
         f"The father of {n} was a {a['father']} and the mother was a {a['mother']}.", a["father"]),
    ]


def fictitious_records(n_authors: int = 20, seed: int = 0) -> list[tuple[str, str, str, dict]]:
    """(question, answer, id, meta) for each question about each invented author."""
    if not 1 <= n_authors <= len(FIRST) * len(LAST):
        raise ValueError(f"fictitious-authors: number of authors must be 1..{len(FIRST) * len(LAST)}")
    return [(q, ans, f"fa-{i:03d}-{field}", {"author": a["name"], "field": field, "key": key})
            for i, a in enumerate(generate_authors(n_authors, seed)) for field, q, ans, key in author_questions(a)]
