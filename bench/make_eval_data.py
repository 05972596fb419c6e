"""Write the synthetic retrieval evaluation set: bench/data/retrieval_eval.jsonl.

    .venv/bin/python bench/make_eval_data.py

Deterministic (fixed seed): running it again rewrites the same file. One JSON object per
line, one line per synthetic user:

    user_id, name
    sessions:  [{id, date, turns: [{id, role, text}]}]     dated chat sessions, user and
                                                            assistant turns, chit-chat around
                                                            the facts
    memories:  [{id, text, created_at, session_id,          facts as extraction writes them
                 evidence_turns, superseded_by, kind}]      ("User …", third person, dates
                                                            absolute); superseded_by names the
                                                            memory that replaced it
    questions: [{id, category, question, gold_memories,     categories: single, multi,
                 gold_turns, superseded_memories}]          temporal, updated, paraphrase

gold_turns are the user turns holding the evidence (the raw-turns mode retrieves user turns).
Paraphrase questions share no index term (proxy.memory.keyword.Analyzer) with their gold memory;
that is asserted here. Values come from banks so that users differ: names, cities, jobs,
stacks, pets, foods, habits, trips.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.memory.keyword import Analyzer  # noqa: E402

SEED = 20240504
USERS = 24
SESSIONS = 12
OUT = Path(__file__).resolve().parent / "data" / "retrieval_eval.jsonl"

# -- banks -------------------------------------------------------------------------------------
PEOPLE = [
    ("Maya", "Chen"), ("Jonas", "Weber"), ("Aisha", "Okafor"), ("Lucas", "Moreau"),
    ("Priya", "Raman"), ("Mateo", "Garcia"), ("Sofia", "Rossi"), ("Kenji", "Tanaka"),
    ("Emma", "Lindqvist"), ("Omar", "Haddad"), ("Chloe", "Dubois"), ("Tomasz", "Nowak"),
    ("Ana", "Souza"), ("Liam", "Brennan"), ("Fatima", "Zahra"), ("Noah", "Fischer"),
    ("Hana", "Kim"), ("Diego", "Alvarez"), ("Ingrid", "Larsen"), ("Ravi", "Patel"),
    ("Zoe", "Papadopoulos"), ("Felix", "Braun"), ("Amara", "Nwosu"), ("Yuki", "Sato"),
    ("Elena", "Petrova"), ("Marcus", "Johnson"),
]
OTHERS = [
    "Tom", "Julia", "Ben", "Ines", "Kai", "Rosa", "Pablo", "Mira", "Theo", "Clara", "Ethan",
    "Vera", "Hugo", "Ada", "Leo", "Eva", "Nico", "Greta", "Sami", "Lotte", "Jamal", "Wren",
    "Oskar", "Bea", "Arjun", "Nell", "Tariq", "Ivy", "Matteo", "June",
]
CITIES = [
    "Berlin", "Lisbon", "Amsterdam", "Toronto", "Melbourne", "Austin", "Barcelona",
    "Copenhagen", "Seoul", "Dublin", "Vienna", "Montreal", "Prague", "Zurich", "Edinburgh",
    "Portland", "Singapore", "Cape Town", "Buenos Aires", "Osaka", "Helsinki", "Denver",
    "Lyon", "Krakow", "Valencia", "Vancouver", "Munich", "Bristol", "Porto", "Tallinn",
]
JOBS = [
    "data engineer", "product designer", "backend developer", "pediatric nurse",
    "chemistry teacher", "UX researcher", "mechanical engineer", "wedding photographer",
    "tax accountant", "site reliability engineer", "marketing manager", "veterinary technician",
    "landscape architect", "physiotherapist", "game developer", "science journalist",
    "hospital pharmacist", "project manager", "machine learning engineer", "frontend developer",
    "civil engineer", "sous chef", "librarian", "technical writer",
]
COMPANIES = [
    "Zalando", "Shopify", "a fintech startup called Ledgerly", "Siemens",
    "St. Mary's Hospital", "Spotify", "a logistics company called Freightwise",
    "an indie studio called Pixel Fern", "Deloitte", "Atlassian",
    "a climate startup named Carbonlane", "the Evening Standard", "Novartis", "Booking.com",
    "a design agency called Studio Kite", "Bosch", "Canva", "a robotics firm called Ardent",
    "the public library", "Klarna", "a bakery chain called Crumb & Co", "Philips",
    "an edtech company called Brightpath", "Airbus",
]
PROJECT_KINDS = [
    ("Pantry Pal", "meal-planning app"), ("Trailmix", "hiking route tracker"),
    ("Budgetbird", "personal budgeting tool"), ("Plantpal", "houseplant watering reminder"),
    ("Gigboard", "band gig listing site"), ("Tidy", "chore-sharing app for flatmates"),
    ("Shelfie", "home library catalogue"), ("Runlog", "training log for runners"),
    ("Kinder", "babysitter scheduling app"), ("Quizzly", "pub quiz generator"),
    ("Wanderlist", "travel itinerary planner"), ("Petsitter", "pet-sitting marketplace"),
    ("Brewday", "homebrewing recipe tracker"), ("Stitchbook", "knitting pattern organiser"),
    ("Swapshop", "clothes swapping marketplace"), ("Tabletop", "board game night planner"),
    ("Lingo Loop", "flashcard app for language learners"), ("Carpool", "ride-sharing app"),
    ("Fieldnotes", "birdwatching journal"), ("Ledger Lite", "invoicing tool for freelancers"),
    ("Moodboard", "journaling app"), ("Rentwise", "rent splitting calculator"),
    ("Soundcheck", "rehearsal room booking site"), ("Greenroute", "bike commute planner"),
]
FRONTENDS = ["React", "Vue", "Svelte", "Angular", "Next.js", "SvelteKit", "Nuxt", "Flutter",
             "SwiftUI", "Remix"]
BACKENDS = ["Django", "FastAPI", "Express", "Rails", "Spring Boot", "Go", "Laravel", "Phoenix",
            "Flask", "NestJS"]
DATABASES = ["Postgres", "MySQL", "MongoDB", "SQLite", "Supabase", "Firebase", "DynamoDB",
             "CockroachDB"]
PETS = {
    "dog": ["beagle", "border collie", "corgi", "golden retriever", "dachshund", "labrador",
            "shiba inu", "greyhound", "whippet", "poodle"],
    "cat": ["Maine Coon", "Siamese", "ginger tabby", "British Shorthair", "Bengal",
            "Ragdoll", "black domestic shorthair"],
    "rabbit": ["Holland Lop", "Netherland Dwarf", "Rex"],
    "parrot": ["African grey", "cockatiel", "budgie"],
    "tortoise": ["Hermann's tortoise", "Russian tortoise"],
}
PET_NAMES = [
    "Biscuit", "Luna", "Pepper", "Mochi", "Ziggy", "Olive", "Bruno", "Nala", "Waffles",
    "Pickle", "Juniper", "Toast", "Miso", "Rocky", "Clementine", "Pixel", "Hazel", "Momo",
    "Banjo", "Kiwi", "Tofu", "Maple", "Oreo", "Sprout", "Noodle", "Pancake", "Fig", "Gizmo",
]
ALLERGENS = ["peanuts", "shellfish", "tree nuts", "sesame", "eggs", "kiwi fruit", "soy",
             "mustard", "celery", "strawberries"]
DIETS = ["vegetarian", "pescatarian", "vegan", "keto", "flexitarian", "gluten-free"]
INSTRUMENTS = ["guitar", "piano", "cello", "ukulele", "drums", "violin", "saxophone",
               "bass guitar", "trumpet", "harmonica"]
HOBBIES = [
    ("bouldering", "at the climbing gym"), ("pottery", "at a ceramics studio"),
    ("chess", "in an online league"), ("sourdough baking", "every weekend"),
    ("birdwatching", "at the local wetlands"), ("woodworking", "in the garage"),
    ("knitting", "with a group on Thursdays"), ("salsa dancing", "twice a month"),
    ("film photography", "on an old Pentax"), ("gardening", "on an allotment"),
    ("sketching", "in cafés"), ("kayaking", "on the river"),
]
LANGUAGES = [("Japanese", "Japan"), ("Portuguese", "Brazil"), ("Italian", "Italy"),
             ("Korean", "Korea"), ("Spanish", "Mexico"), ("German", "Austria"),
             ("Mandarin", "Taiwan"), ("Dutch", "the Netherlands"), ("French", "Quebec"),
             ("Greek", "Greece"), ("Turkish", "Turkey"), ("Swedish", "Sweden")]
PARTNER_JOBS = ["a dentist", "a software tester", "a nurse", "a carpenter", "a barista",
                "a lawyer", "a graphic designer", "a postdoc in biology", "a firefighter",
                "a primary school teacher", "an electrician", "a translator"]
DRINKS = ["oat flat white", "double espresso", "cold brew with no sugar", "cortado",
          "black filter coffee", "cappuccino with cinnamon", "Americano with a splash of milk",
          "iced latte", "mocha", "long black"]
TEAMS = ["Arsenal", "Barcelona", "Bayern Munich", "the Toronto Raptors", "the Boston Celtics",
         "Ajax", "Benfica", "the Green Bay Packers", "the Chicago Cubs", "Celtic", "Juventus",
         "the Melbourne Storm", "Borussia Dortmund", "the Seattle Seahawks", "Napoli",
         "the Montreal Canadiens"]
EXERCISES = ["lifting weights at the gym", "running", "swimming laps", "doing yoga",
             "road cycling", "playing five-a-side football", "rowing", "doing CrossFit",
             "playing tennis", "doing pilates"]
EXERCISE_FREQ = ["three times a week", "every morning", "on weekends",
                 "Mondays and Thursdays", "four days a week"]
EDITORS = ["VS Code", "Neovim", "IntelliJ IDEA", "PyCharm", "Emacs", "Zed", "Sublime Text",
           "Cursor"]
SYSTEMS = ["macOS", "Ubuntu", "Windows 11", "Fedora", "Arch Linux", "Pop!_OS"]
PHONES = ["iPhone 12", "Pixel 7", "Samsung Galaxy S22", "iPhone 15", "Pixel 8",
          "Fairphone 5", "OnePlus 11", "Nothing Phone"]
VEHICLES = ["a 2016 Toyota Corolla", "a Volkswagen ID.3", "a Honda Civic", "a Tesla Model 3",
            "a Subaru Outback", "a Mazda MX-5", "a Fiat 500", "a Skoda Octavia estate",
            "a Kia Niro", "a Volvo V60"]
DISHES = ["mushroom risotto", "vegetable pad thai", "shakshuka", "falafel wraps",
          "spinach lasagna", "miso ramen", "chana masala", "dal makhani", "margherita pizza",
          "potato pierogi", "aloo gobi", "bibimbap with tofu"]
BOOKS = [("Project Hail Mary", "Andy Weir"), ("The Overstory", "Richard Powers"),
         ("Piranesi", "Susanna Clarke"), ("Klara and the Sun", "Kazuo Ishiguro"),
         ("Dune", "Frank Herbert"), ("Educated", "Tara Westover"),
         ("The Left Hand of Darkness", "Ursula K. Le Guin"), ("Circe", "Madeline Miller"),
         ("Thinking, Fast and Slow", "Daniel Kahneman"),
         ("Station Eleven", "Emily St. John Mandel"), ("The Name of the Wind", "Patrick Rothfuss"),
         ("Braiding Sweetgrass", "Robin Wall Kimmerer")]
TRIPS = [  # (what the user did, where)
    ("went hiking in the Dolomites", "the Dolomites"), ("went to a wedding in Porto", "Porto"),
    ("spoke at a conference in Singapore", "Singapore"),
    ("went on a surf trip to Ericeira", "Ericeira"), ("went skiing in Niseko", "Niseko"),
    ("did a food tour in Oaxaca", "Oaxaca"),
    ("took a road trip through the Scottish Highlands", "the Highlands"),
    ("spent a long weekend in Marrakech", "Marrakech"), ("went sailing in Croatia", "Croatia"),
    ("went to a family reunion in Manila", "Manila"),
    ("went to a music festival in Budapest", "Budapest"),
    ("went camping in Yosemite", "Yosemite"), ("took a cooking class in Bologna", "Bologna"),
    ("went on a work offsite in Reykjavik", "Reykjavik"),
    ("cycled around Lake Constance", "Lake Constance"),
    ("visited friends in Nairobi", "Nairobi"),
]
GOALS = [
    ("run the {city} half marathon", "half marathon"),
    ("pass the AWS Solutions Architect exam", "AWS exam"),
    ("finish a first draft of a novel", "novel draft"),
    ("move into a new flat", "flat move"),
    ("give a talk at a local meetup", "meetup talk"),
    ("complete a 200 km cycling sportive", "sportive"),
]

# Chit-chat: requests and small talk with no lasting fact about the user.
TASKS = [
    "write a polite email declining a meeting", "summarise an article about {topic}",
    "come up with a name for a {thing}", "fix a regex that should match ISO dates",
    "plan a cheap grocery list for the week", "understand how compound interest works",
    "write a birthday message for a coworker", "make a packing list for a weekend away",
    "explain {topic} like I'm five", "draft a complaint to my internet provider",
    "write a haiku about {topic}", "outline a presentation about {topic}",
    "rewrite this paragraph so it sounds less formal", "split a restaurant bill of 143 euros "
    "between five people", "convert 350 grams of flour into cups",
]
TOPICS = ["black holes", "the French revolution", "CRISPR", "inflation", "sleep cycles",
          "volcanoes", "jazz history", "quantum computing", "the Roman empire", "octopuses",
          "electric cars", "honeybees", "the stock market", "photosynthesis", "tides"]
THINGS = ["sourdough starter", "fantasy football team", "wifi network", "houseplant",
          "podcast about board games", "group chat", "book club", "vegetable patch"]
PAIRS = [("baking soda", "baking powder"), ("TCP", "UDP"), ("weather", "climate"),
         ("a virus", "a bacterium"), ("affect", "effect"), ("latte", "flat white"),
         ("an ETF", "a mutual fund"), ("RAM", "storage"), ("a crocodile", "an alligator"),
         ("stocks", "bonds"), ("HTTP", "HTTPS"), ("jam", "jelly")]
TIPS = ["sleeping better", "staying focused after lunch", "keeping houseplants alive",
        "surviving a long-haul flight", "public speaking", "cooking rice without a rice cooker",
        "getting rid of hiccups", "remembering people's names", "negotiating a raise",
        "cleaning a cast iron pan", "waking up earlier", "writing a good cover letter"]
MOODS = [
    "Long day today.", "ugh, mondays", "haha that's a good one", "thanks, that's really helpful!",
    "ok makes sense", "Can you make it shorter?", "Perfect, thanks!", "hmm, not quite what I "
    "meant", "lol", "Good morning!", "I'm so tired today", "That worked, thank you!",
    "It's been raining for three days straight.", "so hot today, can barely think",
    "Can you explain that again more simply?", "Nice. One more question.",
    "Sorry, got distracted, where were we?", "Let's try a different approach.",
]
CURIOUS = [
    "Why is the sky blue?", "How do noise-cancelling headphones work?",
    "Is it true that goldfish have a three second memory?", "How long should I boil an egg?",
    "What's a good board game for six people?", "How many calories does walking burn?",
    "Why do onions make you cry?", "What's the best way to learn touch typing?",
    "Can you recommend a podcast about history?", "How does a heat pump work?",
    "What's the tallest mountain in Europe?", "Is it bad to charge my laptop overnight?",
    "How do I get red wine out of a carpet?", "What's a good stretch for a stiff neck?",
    "Why does bread go stale?", "What should I watch tonight, something light?",
]
REPLIES = {
    "task": ["Sure! Here's a first draft you can adjust.", "Happy to help. Let's go step by "
             "step.", "Here you go — tell me if the tone is off."],
    "pair": ["Not quite — here's the difference.", "They're related, but not the same. In "
             "short:", "Good question; people mix them up all the time."],
    "curious": ["Good question. Here's the short version.", "Here's a simple way to put it.",
                "In short: it depends, but here's the gist."],
    "tips": ["Here are a few ideas.", "A few things that tend to work:", "Here's what I'd "
             "suggest."],
    "mood": ["No worries!", "Sure, let's keep going.", "Happy to help.", "Got it."],
}


@dataclass
class Fact:
    kind: str
    text: str  # the memory, "User …"; may hold {day}/{month} filled from its session date
    say: str  # the user turn that states it
    reply: str
    asks: list[str] = field(default_factory=list)  # direct questions (single)
    paraphrases: list[str] = field(default_factory=list)  # questions sharing no term
    session: int = -1
    memory_id: str = ""
    turn_id: str = ""
    superseded_by: str | None = None


@dataclass
class Update:
    kind: str
    old: Fact
    new: Fact
    now: list[str]  # "where do I live now?"
    before: list[str]  # "where did I live before X?"


def pick(rng: random.Random, options: list[Any]) -> Any:
    return options[rng.randrange(len(options))]


def an(noun: str) -> str:
    """The noun with its indefinite article: "an iPhone 12", "a Pixel 8"."""
    vowel = noun[0].lower() in "aeiou" and not noun.startswith("One")
    return f"an {noun}" if vowel else f"a {noun}"


def long_date(day: dt.date) -> str:
    return f"{day.day} {calendar.month_name[day.month]} {day.year}"


def month_year(day: dt.date) -> str:
    return f"{calendar.month_name[day.month]} {day.year}"


class Person:
    """One synthetic user: a profile drawn from the banks, then their facts and updates."""

    def __init__(self, index: int, rng: random.Random, pools: dict[str, list[Any]]):
        self.rng = rng
        self.uid = f"u{index + 1:02d}"
        self.first, self.last = PEOPLE[index]
        self.pools = pools
        r = rng
        self.city = self.take("cities")
        self.partner = self.take("others")
        self.friend = self.take("others")
        self.coworker = self.take("others")
        self.sibling_name = self.take("others")
        self.sibling = pick(r, ["sister", "brother"])
        self.project, self.project_kind = self.take("projects")
        self.species = pick(r, list(PETS))
        self.breed = pick(r, PETS[self.species])
        self.pet = self.take("pet_names")
        self.facts: list[Fact] = []
        self.updates: list[Update] = []
        self.distractors: list[Fact] = []

    def take(self, pool: str) -> Any:
        """Draw without replacement from a shared pool (refilled when empty): users differ."""
        items = self.pools[pool]
        if not items:
            items.extend(self.pools[f"_{pool}"])
            self.rng.shuffle(items)
        return items.pop()


def shuffled(rng: random.Random, items: list[Any]) -> list[Any]:
    copy = list(items)
    rng.shuffle(copy)
    return copy


def build_profile(p: Person) -> None:
    r = p.rng
    add = p.facts.append
    add(Fact(
        "name", f"User's name is {p.first} {p.last}.",
        pick(r, [f"Hi! I'm {p.first} {p.last}, nice to meet you.",
                 f"By the way, my name's {p.first}. {p.first} {p.last}, if you need it for "
                 "the letter."]),
        f"Nice to meet you, {p.first}!",
        asks=["What's my full name?", "What is my surname?"],
        paraphrases=["How should you address me?", "Who am I?"],
    ))
    updated = set(r.sample(["city", "job", "frontend", "diet", "exercise", "editor", "phone"],
                           3))
    job, company = p.take("jobs"), p.take("companies")
    job_fact = Fact(
        "job", pick(r, [f"User works as {an(job)} at {company}.",
                        f"User is {an(job)} at {company}."]),
        pick(r, [f"I'm {an(job)} at {company}, so my days are pretty packed.",
                 f"Work has been hectic. I'm {an(job)} at {company} and we're short-staffed."]),
        "That sounds demanding! How long have you been there?",
        asks=["Where do I work?", "What's my job title?", f"What's my role at {company}?"],
        paraphrases=["What do I do for a living?", "How do I earn money?"],
    )
    if "job" in updated:
        job2, company2 = p.take("jobs"), p.take("companies")
        p.updates.append(Update(
            "job", job_fact,
            Fact("job", pick(r, [
                f"User started a new job as {an(job2)} at {company2} in {{month}}, after "
                f"leaving {company}.",
                f"User left {company} and has worked as {an(job2)} at {company2} since "
                "{month}."]),
                pick(r, [f"Big news: today was my first day as {an(job2)} at {company2}! "
                         f"Leaving {company} was hard but it was time.",
                         f"I handed in my notice at {company}. Starting at {company2} as a "
                         f"{job2} on Monday!"]),
                "Congratulations on the new role!"),
            now=["Where do I work now?", "What's my current job?"],
            before=[f"Where did I work before {company2}?",
                    "What was my previous employer?"],
        ))
    else:
        add(job_fact)

    city_fact = Fact(
        "city", pick(r, [f"User lives in {p.city}.", f"User is based in {p.city}."]),
        pick(r, [f"It's freezing in {p.city} today, I can't feel my fingers.",
                 f"I live in {p.city}, any good day trips from here?"]),
        "Let me think of some options.",
        asks=["Which city do I live in?", "Where am I based?"],
        paraphrases=["Where's home for me?", "Which town should you assume as my "
                     "location for recommendations?"],
    )
    if "city" in updated:
        city2 = p.take("cities")
        p.updates.append(Update(
            "city", city_fact,
            Fact("city", pick(r, [
                f"User moved from {p.city} to {city2} in {{month}}.",
                f"User now lives in {city2}, having moved from {p.city} in {{month}}."]),
                pick(r, [f"The boxes are finally unpacked. Can't believe we actually left "
                         f"{p.city} — {city2} already feels like home.",
                         f"Moving day done! Goodbye {p.city}, hello {city2}."]),
                "Welcome to your new city!"),
            now=["Where do I live now?", "Which city am I based in these days?"],
            before=[f"Which city did I live in before {city2}?",
                    "Where was I living before I moved?"],
        ))
        p.city = city2
    else:
        add(city_fact)

    fe, be, db = p.take("frontends"), pick(r, BACKENDS), pick(r, DATABASES)
    stack = Fact(
        "stack", f"User is building {p.project}, a {p.project_kind}, in {fe} with a {be} "
        f"backend and {db}.",
        pick(r, [f"I'm working on {p.project}, a little {p.project_kind}. Frontend is {fe}, "
                 f"backend is {be}, data in {db}.",
                 f"Side project update: {p.project} ({p.project_kind}) — {fe} + {be}, "
                 f"{db} for storage. Any advice on auth?"]),
        "Nice stack. For auth, a managed provider saves a lot of time.",
        asks=[f"Which database does {p.project} use?", f"What backend framework is "
              f"{p.project} written in?"],
        paraphrases=["What tech am I coding with?", "Remind me of my software tooling "
                     "choices for the thing I'm making."],
    )
    if "frontend" in updated:
        fe2 = pick(r, [f for f in FRONTENDS if f != fe])
        p.updates.append(Update(
            "frontend", stack,
            Fact("stack", f"User is building {p.project}, a {p.project_kind}, with {fe2} on "
                 f"the frontend (switched from {fe} in {{month}}), a {be} backend and {db}.",
                 pick(r, [f"Rewrote the whole {p.project} frontend in {fe2} this week. {fe} "
                          "was fine but the ecosystem fits better now.",
                          f"We finally migrated {p.project} off {fe}. {fe2} from now on!"]),
                 "Migrations like that are a big effort — well done."),
            now=[f"Which frontend framework is {p.project} on now?",
                 f"What is {p.project}'s current frontend?"],
            before=[f"What did {p.project} use before {fe2}?",
                    "Which framework did I switch away from?"],
        ))
    else:
        add(stack)

    pet_word = {"dog": "furry companion", "cat": "furry companion",
                "rabbit": "furry companion"}.get(p.species, "animal companion")
    add(Fact(
        "pet", pick(r, [f"User adopted {an(p.breed)} {p.species} named {p.pet} on {{day}}.",
                        f"User has a {p.species}, {an(p.breed)} called {p.pet}, adopted "
                        "{day}."]),
        pick(r, [f"We adopted a {p.species} today!! A {p.breed}, we named "
                 f"{pick(r, ['him', 'her'])} {p.pet}.",
                 f"Meet {p.pet}, our new {p.breed}! Picked up from the rescue this morning."]),
        f"Congratulations! {p.pet} is a lovely name.",
        asks=[f"What's my {p.species}'s name?", f"What breed is {p.pet}?",
              f"What did I name the {p.breed}?"],
        paraphrases=[f"Who's my {pet_word} at home?", "Which animal shares my home?"],
    ))
    allergen = pick(r, ALLERGENS)
    add(Fact(
        "allergy", f"User is allergic to {allergen}.",
        pick(r, [f"Careful with recipes please, I'm allergic to {allergen}.",
                 f"Had a reaction at a restaurant again — my {allergen} allergy. They swore "
                 "there wasn't any in it."]),
        "I'll keep that in mind for any recipes.",
        asks=["What am I allergic to?", "Do I have any food allergies?"],
        paraphrases=["Which ingredient makes me sick?", "Is there anything I can't safely "
                     "eat?"],
    ))
    diet = pick(r, DIETS)
    diet_fact = Fact(
        "diet", f"User follows a {diet} diet.",
        f"I've been {diet} for a few years now, so no suggestions that break that please.",
        "Noted, I'll stick to that.",
        asks=["What diet do I follow?"], paraphrases=["What do I eat or avoid at meals?"],
    )
    if "diet" in updated:
        diet2 = pick(r, [d for d in DIETS if d != diet])
        p.updates.append(Update(
            "diet", diet_fact,
            Fact("diet", f"User switched from a {diet} diet to a {diet2} diet in {{month}}.",
                 pick(r, [f"Officially {diet2} as of this week! Being {diet} was a good "
                          "stepping stone.",
                          f"Decided to go {diet2}. Done with {diet}, let's see how it goes."]),
                 "Good luck with the change!"),
            now=["What diet am I following at the moment?", "What's my current diet?"],
            before=[f"What diet was I on before going {diet2}?",
                    "What did I eat before my latest diet change?"],
        ))
    else:
        add(diet_fact)

    instrument = pick(r, INSTRUMENTS)
    add(Fact(
        "instrument", f"User is learning to play the {instrument} and has lessons on "
        f"{pick(r, ['Tuesdays', 'Wednesdays', 'Saturday mornings', 'Friday evenings'])}.",
        f"Practising the {instrument} every evening, my teacher says I'm improving!",
        "Consistent practice really pays off.",
        asks=["Which instrument am I learning?", f"When are my {instrument} lessons?"],
        paraphrases=["What musical skill have I picked up?"],
    ))
    hobby, where = pick(r, HOBBIES)
    add(Fact(
        "hobby", f"User's hobby is {hobby} {where}.",
        f"Spent all Sunday on {hobby} {where}. Best way to switch off.",
        "That sounds like a great way to recharge.",
        asks=["What's my hobby?", f"Where do I do {hobby}?"],
        paraphrases=["How do I unwind on weekends?"],
    ))
    lang, country = pick(r, LANGUAGES)
    add(Fact(
        "language", f"User is learning {lang} for a trip to {country}.",
        f"Day 40 of my {lang} streak! Want to be able to order food in {country}.",
        "Impressive streak!",
        asks=["Which language am I learning?", f"Why am I learning {lang}?"],
        paraphrases=["Which foreign tongue am I studying?"],
    ))
    pjob = pick(r, PARTNER_JOBS)
    add(Fact(
        "partner", f"User's partner is {p.partner}, who works as {pjob}.",
        f"My partner {p.partner} is {pjob} and works weird shifts, so dinners are tricky.",
        "Batch cooking could help with that.",
        asks=["What's my partner's name?", "What does my partner do?",
              f"What does {p.partner} do for work?"],
        paraphrases=["Who is my significant other?", "Who am I dating?"],
    ))
    sib_city = pick(r, [c for c in CITIES if c != p.city])
    add(Fact(
        "sibling", f"User has a {p.sibling} named {p.sibling_name} who lives in {sib_city}.",
        f"My {p.sibling} {p.sibling_name} lives in {sib_city}, I'm visiting next month.",
        "Have a great visit!",
        asks=[f"Where does my {p.sibling} live?", f"What's my {p.sibling}'s name?",
              f"Where does {p.sibling_name} live?"],
        paraphrases=["Which relative am I visiting soon?"],
    ))
    bday = dt.date(1990, r.randint(1, 12), r.randint(1, 28))
    bday_text = f"{bday.day} {calendar.month_name[bday.month]}"
    add(Fact(
        "birthday", f"User's birthday is on {bday_text}.",
        f"My birthday is on {bday_text}, thinking about what to do this year.",
        "A dinner with friends is always a safe choice.",
        asks=["When is my birthday?"], paraphrases=["When do I turn a year older?"],
    ))
    drink = pick(r, DRINKS)
    add(Fact(
        "coffee", f"User drinks {an(drink)} every morning.",
        f"Can't start the day without my {drink}.", "A classic.",
        asks=["What coffee do I drink every morning?", "What's my usual coffee order?"],
        paraphrases=["How do I take my caffeine?"],
    ))
    team = pick(r, TEAMS)
    add(Fact(
        "team", f"User is a fan of {team}.",
        f"Did you see the {team} game last night?? What a finish.",
        "I can't watch games, but it sounds exciting!",
        asks=["Which team am I a fan of?"], paraphrases=["Which side do I root for?"],
    ))
    exercise, freq = pick(r, EXERCISES), pick(r, EXERCISE_FREQ)
    exercise_fact = Fact(
        "exercise", f"User exercises by {exercise} {freq}.",
        f"Back from {exercise}. I try to go {freq}.", "Nice routine!",
        asks=["How often do I exercise?"], paraphrases=["How do I stay in shape?"],
    )
    if "exercise" in updated:
        exercise2 = pick(r, [e for e in EXERCISES if e != exercise])
        p.updates.append(Update(
            "exercise", exercise_fact,
            Fact("exercise", f"User switched from {exercise} to {exercise2} {freq} in "
                 "{month}.",
                 f"Quit {exercise} — my knees weren't happy. It's {exercise2} {freq} now.",
                 "Good call to listen to your body."),
            now=["What's my current workout routine?", "How do I exercise these days?"],
            before=[f"What did I do for exercise before {exercise2}?",
                    "What workout did I give up?"],
        ))
    else:
        add(exercise_fact)

    editor, system = p.take("editors"), pick(r, SYSTEMS)
    editor_fact = Fact(
        "editor", f"User writes code in {editor} on {system}.",
        f"My {editor} setup on {system} keeps freezing when I open big files, any ideas?",
        "Try disabling extensions one by one.",
        asks=["Which code editor do I use?", "Which operating system am I on?"],
        paraphrases=["Which program do I write software in?"],
    )
    if "editor" in updated:
        editor2 = pick(r, [e for e in EDITORS if e != editor])
        p.updates.append(Update(
            "editor", editor_fact,
            Fact("editor", f"User switched from {editor} to {editor2} on {system} in "
                 "{month}.",
                 f"Took the plunge and moved to {editor2}. Bye {editor}, you were slow.",
                 "Enjoy the new setup!"),
            now=["Which code editor am I using these days?", "What's my editor now?"],
            before=[f"Which editor did I use before {editor2}?",
                    "What editor did I abandon?"],
        ))
    else:
        add(editor_fact)

    phone = pick(r, PHONES)
    phone_fact = Fact(
        "phone", f"User's phone is {an(phone)}.",
        f"My {phone} battery dies by 3pm, is that normal?",
        "Batteries degrade; check the battery health setting.",
        asks=["What phone do I have?"], paraphrases=["Which handset is in my pocket?"],
    )
    if "phone" in updated:
        phone2 = pick(r, [x for x in PHONES if x != phone])
        p.updates.append(Update(
            "phone", phone_fact,
            Fact("phone", f"User replaced their {phone} with {an(phone2)} in {{month}}.",
                 f"Got {an(phone2)}! The old {phone} finally gave up.", "Enjoy the upgrade!"),
            now=["What phone do I have now?", "Which phone am I using currently?"],
            before=[f"What phone did I have before the {phone2}?",
                    "Which phone did I replace?"],
        ))
    else:
        add(phone_fact)

    vehicle = pick(r, VEHICLES)
    add(Fact(
        "vehicle", f"User drives {vehicle}.",
        f"Need to book a service for my car, it's {vehicle} and it's making a rattling "
        "noise.", "A rattle is worth checking soon.",
        asks=["What car do I drive?", "What's my car model?"],
        paraphrases=["Which vehicle do I own?"],
    ))
    dish = pick(r, DISHES)
    add(Fact(
        "dish", f"User's favourite dish is {dish}.",
        f"Honestly {dish} is my comfort food, I could eat it every day.", "Good choice!",
        asks=["What's my favourite dish?", "What's my comfort food?"],
        paraphrases=["What meal do I love most?"],
    ))
    book, author = pick(r, BOOKS)
    add(Fact(
        "book", f"User is reading {book} by {author}.",
        f"Started {book} by {author} last night, couldn't put it down.", "Enjoy it!",
        asks=["Which book am I reading?", f"Who is the author of {book}?"],
        paraphrases=["What novel is on my nightstand?"],
    ))
    goal, label = pick(r, GOALS)
    add(Fact(
        "goal", f"User set a goal in {{month}}: to {goal.format(city=p.city)}.",
        f"New goal: {goal.format(city=p.city)}! Going to need a plan.", "Let's make one.",
        asks=["What goal am I working towards?", f"What's my plan for the {label}?"],
    ))
    for trip, place in r.sample(TRIPS, 2):
        add(Fact(
            "trip", f"User {trip} in {{month}}.",
            pick(r, [f"Just got back and still buzzing: we {trip}!",
                     f"Back home! We {trip} and the jet lag is brutal."]),
            "Welcome back! How was it?",
            asks=[f"When was I in {place}?"], paraphrases=[],
        ))


def build_distractors(p: Person) -> None:
    """Facts about other people, sharing the words of the user's own facts."""
    r = p.rng
    species = pick(r, list(PETS))
    other_pet = pick(r, [n for n in PET_NAMES if n != p.pet])
    other_city = pick(r, [c for c in CITIES if c != p.city])
    other_job, other_editor = pick(r, JOBS), pick(r, EDITORS)
    other_lang = pick(r, LANGUAGES)[0]
    month = calendar.month_name[r.randint(1, 12)]
    options = [
        Fact("pet", f"User's coworker {p.coworker} has a {species} named {other_pet}.",
             f"My coworker {p.coworker} brought their {species} {other_pet} to the office, "
             "so cute.", "Office pets are the best.",
             asks=[f"What's the name of {p.coworker}'s {species}?"]),
        Fact("allergy", f"User's partner {p.partner} is allergic to cats.",
             f"{p.partner} sneezes nonstop at my parents' place, allergic to their cats.",
             "Antihistamines before the visit might help.",
             asks=[f"What is {p.partner} allergic to?"]),
        Fact("city", f"User's friend {p.friend} moved to {other_city}.",
             f"My friend {p.friend} just moved to {other_city}, I might visit in summer.",
             "Sounds like a good excuse for a trip!", asks=[f"Where did {p.friend} move to?"]),
        Fact("stack", f"User's team at work is debating a migration to {pick(r, DATABASES)}.",
             "At work we had a two-hour debate about switching databases. Nothing decided.",
             "Those debates can drag on."),
        Fact("editor", f"User's coworker {p.coworker} uses {other_editor}.",
             f"{p.coworker} keeps trying to convert me to {other_editor} lol.", "Editor wars!",
             asks=[f"Which editor does {p.coworker} use?"]),
        Fact("birthday", f"User's partner {p.partner}'s birthday is in {month}.",
             f"{p.partner}'s birthday is in {month}, need gift ideas!",
             "How about an experience gift?", asks=[f"When is {p.partner}'s birthday?"]),
        Fact("team", f"User's father supports {pick(r, TEAMS)}.",
             "My dad is a die-hard fan of the rival team, match days are tense at home.",
             "Rivalries make it fun."),
        Fact("language", f"User's partner {p.partner} is learning {other_lang} for work.",
             f"{p.partner} has started {other_lang} lessons for work, cute to hear them "
             "practise.", "Nice!", asks=[f"Which language is {p.partner} learning?"]),
        Fact("job", f"User's friend {p.friend} became {an(other_job)}.",
             f"{p.friend} changed careers and is {an(other_job)} now, so proud of them.",
             "That takes courage.", asks=[f"What does {p.friend} do now?"]),
        Fact("diet", f"User's sibling {p.sibling_name} went {pick(r, DIETS)} last month.",
             f"{p.sibling_name} changed diet and won't stop talking about it.", "Haha."),
    ]
    p.distractors = r.sample(options, 7)


def chitchat(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n (user, assistant) exchanges of small talk and requests, no repeats."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        roll = rng.random()
        if roll < 0.3:
            kind = "task"
            task = pick(rng, TASKS).format(topic=pick(rng, TOPICS), thing=pick(rng, THINGS))
            text = pick(rng, ["Can you help me {}?", "Could you {} for me?", "I need to {}."])
            text = text.format(task)
        elif roll < 0.45:
            kind = "pair"
            a, b = pick(rng, PAIRS)
            text = pick(rng, [f"What's the difference between {a} and {b}?",
                              f"Is {a} the same thing as {b}?"])
        elif roll < 0.6:
            kind = "tips"
            text = pick(rng, ["Any tips for {}?", "Do you have advice on {}?"]).format(
                pick(rng, TIPS))
        elif roll < 0.8:
            kind, text = "curious", pick(rng, CURIOUS)
        else:
            kind, text = "mood", pick(rng, MOODS)
        if text in seen:
            continue
        seen.add(text)
        out.append((text, pick(rng, REPLIES[kind])))
    return out


def paraphrase_ok(analyzer: Analyzer, question: str, *texts: str) -> bool:
    q = set(analyzer.terms(question))
    return all(not (q & (set(analyzer.terms(t)) - {"user"})) for t in texts)


def build_user(index: int, rng: random.Random, pools: dict[str, list[Any]],
               analyzer: Analyzer) -> dict[str, Any]:
    p = Person(index, rng, pools)
    build_profile(p)
    build_distractors(p)
    r = rng

    # Sessions and their dates.
    start = dt.date(2023, 1, 1) + dt.timedelta(days=r.randint(0, 60))
    dates = [start]
    for _ in range(SESSIONS - 1):
        dates.append(dates[-1] + dt.timedelta(days=r.randint(9, 24)))

    # Place facts: profile facts early, updates' old halves early and new halves late,
    # trips in distinct months, distractors anywhere.
    for fact in p.facts:
        fact.session = r.randint(0, 6) if fact.kind != "name" else 0
    trips = [f for f in p.facts if f.kind == "trip"]
    months = r.sample(range(1, SESSIONS), len(trips))
    while len({(dates[m].year, dates[m].month) for m in months}) < len(months):
        months = r.sample(range(1, SESSIONS), len(trips))
    for fact, session in zip(trips, months, strict=True):
        fact.session = session
    for update in p.updates:
        update.old.session = r.randint(0, 4)
        update.new.session = r.randint(6, SESSIONS - 1)
    for fact in p.distractors:
        fact.session = r.randint(0, SESSIONS - 1)
    facts = [*p.facts, *(u.old for u in p.updates), *(u.new for u in p.updates),
             *p.distractors]

    per_session: list[list[tuple[str, str, Fact | None]]] = [[] for _ in range(SESSIONS)]
    for fact in facts:
        per_session[fact.session].append((fact.say, fact.reply, fact))
    fillers = chitchat(r, 110 - len(facts))
    for i, (text, reply) in enumerate(fillers):
        per_session[i % SESSIONS].append((text, reply, None))
    for turns in per_session:
        r.shuffle(turns)
        # Names and greetings come first in a conversation.
        turns.sort(key=lambda t: 0 if t[2] is not None and t[2].kind == "name" else 1)

    sessions: list[dict[str, Any]] = []
    memories: list[dict[str, Any]] = []
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    for si, turns in enumerate(per_session):
        day = dates[si]
        sid = f"{p.uid}-s{si + 1:02d}"
        out_turns = []
        for ti, (text, reply, fact) in enumerate(turns):
            tid = f"{sid}-t{2 * ti + 1:03d}"
            out_turns.append({"id": tid, "role": "user", "text": text})
            out_turns.append({"id": f"{sid}-t{2 * ti + 2:03d}", "role": "assistant",
                              "text": reply})
            if fact is not None:
                fact.turn_id = tid
                fact.text = fact.text.format(day=long_date(day), month=month_year(day))
                moment = dt.datetime(day.year, day.month, day.day, 19, 0,
                                     tzinfo=dt.timezone.utc) + dt.timedelta(minutes=3 * ti)
                fact.memory_id = f"{p.uid}-m{len(memories) + 1:03d}"
                memories.append({
                    "id": fact.memory_id, "kind": fact.kind, "text": fact.text,
                    "created_at": (moment - epoch).total_seconds(),
                    "session_id": sid, "evidence_turns": [tid], "superseded_by": None,
                })
        sessions.append({"id": sid, "date": day.isoformat(), "turns": out_turns})
    by_id = {m["id"]: m for m in memories}
    for update in p.updates:
        by_id[update.old.memory_id]["superseded_by"] = update.new.memory_id

    # Questions.
    questions: list[dict[str, Any]] = []

    def ask(category: str, text: str, gold: list[Fact], old: Sequence[Fact] = ()) -> None:
        questions.append({
            "id": f"{p.uid}-q{len(questions) + 1:02d}", "category": category,
            "question": text,
            "gold_memories": [f.memory_id for f in gold],
            "gold_turns": [f.turn_id for f in gold],
            "superseded_memories": [f.memory_id for f in old],
            "superseded_turns": [f.turn_id for f in old],
        })

    current = {f.kind: f for f in p.facts}
    current.update({u.kind if u.kind != "frontend" else "stack": u.new for u in p.updates})
    plain = [f for f in p.facts if f.asks and f.kind != "trip"]
    for fact in r.sample(plain, 5):
        ask("single", pick(r, fact.asks), [fact])
    about_others = [f for f in p.distractors if f.asks]
    if about_others:
        fact = pick(r, about_others)
        ask("single", pick(r, fact.asks), [fact])
    para_pool = [f for f in shuffled(r, p.facts) if f.paraphrases]
    chosen = 0
    for fact in para_pool:
        options = [q for q in fact.paraphrases if paraphrase_ok(analyzer, q, fact.text)]
        strict = [q for q in options if paraphrase_ok(analyzer, q, fact.say)]
        if options and chosen < 4:
            ask("paraphrase", pick(r, strict or options), [fact])
            chosen += 1
    assert chosen == 4, p.uid
    combos = [
        (("name", "job", "city"), "Write a two-line bio for me: who I am, what I do and "
         "where I'm based."),
        (("diet", "allergy"), "Suggest a dinner I can safely cook tonight given my diet and "
         "my allergy."),
        (("partner", "city"), "Plan a date night for me and my partner in my city."),
        (("stack", "editor"), "Give me a dev environment checklist for my side project, with "
         "the editor I use."),
        (("pet", "city"), "Suggest a weekend outing near where I live where I can bring my "
         "pet."),
        (("birthday", "partner"), "My partner is organising my birthday — remind me of the "
         "date and their name."),
        (("coffee", "exercise"), "Design a morning routine around my workout habit and my "
         "usual morning drink."),
        (("sibling", "city"), "How far away does my sibling live from me?"),
        (("language", "trip"), "Which language am I learning, and where have I travelled "
         "this year?"),
    ]
    for kinds, text in r.sample(combos, 2):
        gold = [current[k] for k in kinds]
        if "trip" in kinds:
            gold.append(next(f for f in p.facts if f.kind == "trip" and f is not gold[-1]))
        ask("multi", text, gold)
    for update in p.updates:
        ask("updated", pick(r, update.now), [update.new], [update.old])
    update = pick(r, p.updates)
    ask("temporal", pick(r, update.before), [update.new], [])
    trip = pick(r, trips)
    trip_month = month_year(dates[trip.session])
    ask("temporal", pick(r, [f"Where did I travel in {trip_month}?",
                             f"What trip did I take in {trip_month}?"]), [trip])
    pet = current["pet"]
    ask("temporal", pick(r, [f"When did I adopt {p.pet}?", f"How long have I had {p.pet}?"]),
        [pet])
    return {"user_id": p.uid, "name": f"{p.first} {p.last}", "sessions": sessions,
            "memories": memories, "questions": questions}


def main() -> None:
    rng = random.Random(SEED)
    banks = {
        "cities": CITIES, "others": OTHERS, "projects": PROJECT_KINDS, "pet_names": PET_NAMES,
        "jobs": JOBS, "companies": COMPANIES, "frontends": FRONTENDS, "editors": EDITORS,
    }
    pools: dict[str, list[Any]] = {}
    for name, bank in banks.items():
        pools[f"_{name}"] = list(bank)
        pools[name] = shuffled(rng, bank)
    analyzer = Analyzer()
    users = [build_user(i, rng, pools, analyzer) for i in range(USERS)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for user in users:
            f.write(json.dumps(user, ensure_ascii=False) + "\n")
    questions = [q for u in users for q in u["questions"]]
    turns = [t for u in users for s in u["sessions"] for t in s["turns"]]
    counts: dict[str, int] = {}
    for q in questions:
        counts[q["category"]] = counts.get(q["category"], 0) + 1
    print(f"wrote {OUT.relative_to(ROOT)}: {len(users)} users, {len(turns)} turns, "
          f"{sum(len(u['memories']) for u in users)} memories, {len(questions)} questions "
          f"{counts}, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
