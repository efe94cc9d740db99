"""The built-in task: turn a free-text assistant request into a strict JSON record.

Requests are generated from templates with varied wording, names, days, times and
durations, so the records are exact and the model cannot have seen them. Three intents,
each with its own fields; times are normalised to 24-hour HH:MM, durations to minutes.
"""

from __future__ import annotations

import json
import random

SYSTEM = (
    "Convert the user's request into one JSON object and output only the JSON. Schemas: "
    '{"intent":"schedule_meeting","attendees":[names],"day":Weekday,"time":"HH:MM","duration_min":int,"topic":str} | '
    '{"intent":"send_message","recipient":name,"channel":"email"|"sms"|"slack","message":str} | '
    '{"intent":"set_reminder","task":str,"day":Weekday,"time":"HH:MM"}'
)

NAMES = ["Priya", "Tom", "Aisha", "Marco", "Lena", "Kenji", "Sofia", "Omar", "Grace", "Diego", "Hana", "Ravi",
         "Chloe", "Ivan", "Nora", "Samuel", "Yuki", "Fatima", "Lucas", "Maya"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TOPICS = ["the Q3 budget", "the launch plan", "hiring", "the design review", "onboarding", "the roadmap",
          "customer feedback", "the sales forecast", "the API migration", "team goals"]
TASKS = ["call the dentist", "renew my passport", "water the plants", "pay the rent", "submit the report",
         "book flights", "pick up the dry cleaning", "send the invoice", "back up the laptop", "buy a gift for Mum"]
MESSAGES = ["I'm running ten minutes late", "the slides are ready", "can we move lunch to Friday",
            "thanks for your help today", "the build is green again", "please review my pull request",
            "dinner is at eight", "the contract is signed"]
DURATIONS = {15: ["15 minutes", "a quarter of an hour"], 30: ["30 minutes", "half an hour", "30 min"],
             45: ["45 minutes", "45 mins"], 60: ["an hour", "one hour", "60 minutes"], 90: ["an hour and a half", "90 minutes"]}


def _time(rng: random.Random) -> tuple[str, str]:
    """(spoken, HH:MM) such as ("3pm", "15:00") or ("9:30 in the morning", "09:30")."""
    hour = rng.randint(7, 19)
    minute = rng.choice([0, 0, 15, 30, 45])
    h12 = hour % 12 or 12
    ampm = "am" if hour < 12 else "pm"
    spoken = rng.choice([
        f"{h12}{ampm}" if minute == 0 else f"{h12}:{minute:02d}{ampm}",
        f"{h12}:{minute:02d} {ampm}",
        f"{hour:02d}:{minute:02d}",
    ])
    if hour == 12 and minute == 0 and rng.random() < 0.5:
        spoken = "noon"
    return spoken, f"{hour:02d}:{minute:02d}"


def _meeting(rng: random.Random) -> tuple[str, dict]:
    people = rng.sample(NAMES, rng.randint(1, 3))
    who = people[0] if len(people) == 1 else ", ".join(people[:-1]) + " and " + people[-1]
    day = rng.choice(DAYS)
    spoken, hhmm = _time(rng)
    minutes = rng.choice(list(DURATIONS))
    length = rng.choice(DURATIONS[minutes])
    topic = rng.choice(TOPICS)
    text = rng.choice([
        f"Can you set up a meeting with {who} on {day} at {spoken} about {topic}? It should take {length}.",
        f"Schedule {length} with {who} this {day}, {spoken}, to discuss {topic}.",
        f"Please book a call with {who} about {topic} on {day} at {spoken}, lasting {length}.",
        f"I need to meet {who} on {day} at {spoken} for {length} to go over {topic}.",
    ])
    return text, {"intent": "schedule_meeting", "attendees": people, "day": day, "time": hhmm,
                  "duration_min": minutes, "topic": topic.removeprefix("the ")}


def _message(rng: random.Random) -> tuple[str, dict]:
    name = rng.choice(NAMES)
    channel, said = rng.choice([("email", "email"), ("sms", "text"), ("sms", "SMS"), ("slack", "Slack"),
                                ("slack", "ping on Slack"), ("email", "mail")])
    message = rng.choice(MESSAGES)
    text = rng.choice([
        f"Send {name} a {said} saying {message}.",
        f"{said.capitalize()} {name}: {message}.",
        f"Could you {said} {name} that {message}?",
        f"Let {name} know by {said} that {message}.",
    ])
    return text, {"intent": "send_message", "recipient": name, "channel": channel, "message": message}


def _reminder(rng: random.Random) -> tuple[str, dict]:
    task = rng.choice(TASKS)
    day = rng.choice(DAYS)
    spoken, hhmm = _time(rng)
    text = rng.choice([
        f"Remind me to {task} on {day} at {spoken}.",
        f"Set a reminder for {day} {spoken}: {task}.",
        f"Don't let me forget to {task} — {day}, {spoken}.",
        f"On {day} at {spoken} remind me to {task}, please.",
    ])
    return text, {"intent": "set_reminder", "task": task, "day": day, "time": hhmm}


def make_examples(n: int, seed: int) -> list[dict]:
    """n examples as chat records: {"messages": [system, user, assistant]} with the gold record."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text, record = rng.choice([_meeting, _message, _reminder])(rng)
        out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                                 {"role": "assistant", "content": json.dumps(record)}], "gold": record})
    return out


def write_jsonl(examples: list[dict], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"messages": ex["messages"]}) + "\n" for ex in examples)
