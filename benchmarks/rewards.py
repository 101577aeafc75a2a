"""Rule rewards for the RL real runs (``ppo.reward: benchmarks/rewards.py:<function>``): plain Python a
reader can check, prompts and answers in, one float per answer out."""


def concise(prompts: list[str], responses: list[str]) -> list[float]:
    """1.0 for an answer of 10 to 30 words, falling linearly to 0 at 0 and at 60 words; an answer that
    repeats the prompt's opening words scores 0 (so copying the question does not pay)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        words = response.split()
        n = len(words)
        score = n / 10 if n < 10 else 1.0 if n <= 30 else max(0.0, (60 - n) / 30)
        if prompt.split()[:5] and words[:5] == prompt.split()[:5]:
            score = 0.0
        scores.append(score)
    return scores
