"""A known generative model of impressions, clicks and watch ratios.

Why: to judge a multi-task model on synthetic logs one must know the best achievable
metrics. Every user, video and context value here carries latent vectors in three parts:
one shared by both tasks, one for CTR only and one for CVR only. `task_relatedness` (rho)
mixes them, so that at rho = 1 both tasks are driven by the same interaction and at rho = 0
by independent ones:

    z_ctr = sqrt(rho) <u_shared, v_shared> + sqrt(1 - rho) <u_ctr, v_ctr>
    z_cvr = sqrt(rho) <u_shared, v_shared> + sqrt(1 - rho) <u_cvr, v_cvr>

plus context effects that pull the tasks apart as in real traffic (position and a
click-bait cover raise CTR only; the cover lowers the watch ratio; long videos are
watched less fully). A video's latent vector is built from its observable attributes
(categories, keywords, tags, content provider) plus a small idiosyncratic part, and a
user's from group, age and preferred categories plus an idiosyncratic part, so a model
that sees the log's features can learn most, not all, of the signal.

The catalogues' shape is a setting (`WorldConfig.impressions_per_user`, ...; named shapes in
`CATALOGUES`). The default, "sample", is the real sample's: ~6.5 impressions per user and 8
videos per impression, so nearly every impression shows a new video and id embeddings can
learn little. "paper" is the paper's Table 1: ~30 impressions per user and ~27 per video,
so ids come back and the idiosyncratic parts can be learned too.

The click probability p and the expected watch ratio m of every impression are kept as
ground truth. Given a click, the watch ratio is exactly 1.0 with probability m**gamma and
otherwise Beta-distributed with the mean that makes E[ratio] = m. Biases and gamma are
calibrated on a fixed sample so that the statistics of docs/LOG_SCHEMA.md's real sample hold:
CTR 38.8%, mean watch ratio among clicks 0.818, 51% of clicks fully watched.

Every impression also carries the production model's pCTR (the log's `pctr`), an incumbent
that a learned model should beat: the score of a coarser model of the same world. Its logit
is the truth's CTR context effects (position, recall algorithm, cover quality, same category
as the source video) plus the CTR interaction of the coarse vectors only (the user's group,
age and preferred categories with the video's two category levels: no keywords, tags,
providers or idiosyncratic parts) scaled down by `production_interaction` (0.1), plus
Gaussian noise of `production_noise` (1.0) logit units, with a bias calibrated so that its
mean is the CTR. Its AUC is about 0.54-0.56, informative but below what a learned model
reaches (0.61 for `make demo`'s model, trained on 15k impressions, on its eval day, where
it scores 0.56; 0.70 for a single-task net on 1M impressions of the paper catalogue).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from lt4rec import features

TARGET_CTR = 0.388
TARGET_MEAN_WATCH_RATIO = 0.818
TARGET_FULL_WATCH_SHARE = 0.51

N_CATEGORY1 = 30
CATEGORY2_PER_CATEGORY1 = 10
N_KEYWORDS = 20_000
KEYWORDS_PER_TOPIC = 40
N_TAGS = 3_000
TAGS_PER_TOPIC = 24
N_USER_GROUPS = 20
N_AGES = 8
N_RECALL_ALGORITHMS = 12
N_COVER_QUALITIES = 5
MAX_REQUEST_SIZE = 10
MAX_VIDEOS = 5_000_000
DAY_MS = 86_400_000

NO_SOURCE_RATE = 0.03  # requests not made from a video page: no source video at all (4% of rows)
# Share of examples whose value is the `-1` placeholder. With the rows that have no source
# video at all, these give docs/LOG_SCHEMA.md's real rates: 10% for the source categories, 5% for
# FEA_STAG and FEA_UCAT, 4% for FEA_COVERQUALITY, 3% for FEA_ORDER.
MISSING_RATES = {
    "FEA_SICAT1": 0.062,
    "FEA_SICAT2": 0.062,
    "FEA_STAG": 0.01,
    "FEA_UCAT": 0.05,
    "FEA_COVERQUALITY": 0.04,
    "FEA_ORDER": 0.03,
}

# Multi-valued lengths: (max, p) of `max - min(Geometric(p) - 1, max - 1)`, tuned so the
# means match the real sample (IKEYWORD 7.6, SIKEYWORD 7.3, IXFTAG 5.6, STAG 4.3, UCAT 3.7).
KEYWORD_LENGTH = (8, 0.72)
TAG_LENGTH = (6, 0.72)
SOURCE_TAG_LENGTH = (6, 0.33)
USER_CATEGORY_LENGTH = (6, 0.27)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """What shapes a synthetic world; `rows` and the catalogue's shape size the catalogues.

    The defaults are the "sample" catalogue (docs/LOG_SCHEMA.md's real sample: 6.5 impressions
    per user, 8 videos per impression, 0.8 providers per video); `world_config("paper", ...)`
    gives the paper's Table 1 shape (see `CATALOGUES`).
    """

    rows: int
    days: int = 2
    seed: int = 0
    task_relatedness: float = 0.5
    start_day: dt.date = dt.date(2020, 10, 11)
    latent_dim: int = 8
    signal: float = 1.2  # scale of the interaction terms in logit units
    # The catalogue's shape: users = rows / impressions_per_user, videos = rows /
    # impressions_per_video (at most MAX_VIDEOS), providers = providers_per_video * videos.
    catalogue: str = "sample"  # the preset these settings came from (recorded, not read)
    impressions_per_user: float = 6.5
    impressions_per_video: float = 0.125
    providers_per_video: float = 0.8
    # Scales of the idiosyncratic latent parts (what no attribute tells): a user's own, a
    # video's own; and of a content provider's vector.
    user_own_scale: float = 0.6
    video_own_scale: float = 0.4
    provider_scale: float = 0.5
    # The production model's pCTR (`Impressions.production_pctr`, see `_production_logit`):
    # how much of the coarse interaction it has (0 none, 1 all) and its noise, in logit units.
    # The defaults put its AUC a few points under what `make demo`'s model reaches.
    production_interaction: float = 0.1
    production_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows must be at least 1, got {self.rows}")
        if self.days < 1:
            raise ValueError(f"days must be at least 1, got {self.days}")
        if not 0.0 <= self.task_relatedness <= 1.0:
            raise ValueError(f"task_relatedness must be in [0, 1], got {self.task_relatedness}")
        if self.catalogue not in CATALOGUES:
            raise ValueError(f"catalogue must be one of {sorted(CATALOGUES)}, got {self.catalogue!r}")
        for name in ("impressions_per_user", "impressions_per_video", "providers_per_video"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def settings(self) -> dict:
        """The settings as JSON-able values (for `_generator.json`)."""
        return {**dataclasses.asdict(self), "start_day": self.start_day.isoformat()}


# Named catalogue shapes: the WorldConfig settings each sets (the rest keep their defaults).
# "sample": docs/LOG_SCHEMA.md's real sample of 4,322 impressions (500 users, 4,191 videos,
# 3,213 providers): ids are nearly all new, ~6.5 impressions per user. "paper": the paper's
# Table 1 (297M impressions of 10M users and 11M videos over 9 days): 29.7 impressions per
# user, 27 per video; providers are not given there, 10 videos per provider is assumed.
CATALOGUES: dict[str, dict] = {
    "sample": {},
    "paper": {
        "impressions_per_user": 297.0 / 10.0,
        "impressions_per_video": 297.0 / 11.0,
        "providers_per_video": 0.1,
    },
}


def world_config(catalogue: str = "sample", **settings) -> WorldConfig:
    """A WorldConfig of a named catalogue shape; `settings` override the preset's."""
    if catalogue not in CATALOGUES:
        raise ValueError(f"catalogue must be one of {sorted(CATALOGUES)}, got {catalogue!r}")
    return WorldConfig(**{**CATALOGUES[catalogue], **settings, "catalogue": catalogue})


@dataclasses.dataclass
class Impressions:
    """A columnar batch of impressions: indices into the world's catalogues, and truth."""

    request_no: np.ndarray  # int64: global request counter
    time_ms: np.ndarray  # int64: unix milliseconds
    user: np.ndarray  # int64 index into users
    video: np.ndarray  # int64 index into videos
    source_video: np.ndarray  # int64 index into videos, -1 when there is none
    algorithm: np.ndarray  # int64 recall algorithm index
    position: np.ndarray  # int64 position in the result list
    p_click: np.ndarray  # float64 true click probability
    expected_watch_ratio: np.ndarray  # float64 true E[watch ratio | click]
    click: np.ndarray  # int64 in {0, 1}
    watch_ratio: np.ndarray  # float64 in [0, 1]; > 0 exactly where click == 1
    production_pctr: np.ndarray  # float64: a noisy production model's pCTR
    source_keyword_count: np.ndarray  # int64: how many of the source video's keywords are logged
    source_tag_count: np.ndarray  # int64: how many of the source video's tags are logged
    missing: dict[str, np.ndarray]  # feature name -> bool, True where the log says -1

    def __len__(self) -> int:
        return len(self.user)


def _latent(rng: np.random.Generator, n: int, dim: int, scale: float = 1.0) -> np.ndarray:
    """Latent vectors of n entities: [n, 3, dim] for the shared, CTR and CVR parts."""
    return rng.normal(0.0, scale / np.sqrt(dim), size=(n, 3, dim))


def _lengths(rng: np.random.Generator, n: int, shape: tuple[int, float]) -> np.ndarray:
    maximum, p = shape
    return maximum - np.minimum(rng.geometric(p, size=n) - 1, maximum - 1)


def _topic_walks(
    rng: np.random.Generator, topic_members: np.ndarray, topic: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct members of each row's topic (a coprime stride walk from a random start), as
    (every walk: [topics * per_topic, width], each row's walk). Millions of videos then
    cost an index each, not a row of members made at start-up."""
    per_topic = topic_members.shape[1]
    start = rng.integers(0, per_topic, size=len(topic))
    offsets = (np.arange(per_topic)[:, None] + 7 * np.arange(width)[None, :]) % per_topic
    return topic_members[:, offsets].reshape(-1, width), topic * per_topic + start


def _walk_means(vectors: np.ndarray, walks: np.ndarray) -> np.ndarray:
    """`_masked_mean` of the vectors of every walk's first c members, c = 0..width, at row
    walk * (width + 1) + c: made once, so that a video's mean is a lookup (the same
    numbers: each row is the same einsum of the same values)."""
    width = walks.shape[1]
    present = np.arange(width)[None, :] < np.arange(width + 1)[:, None]  # [count, member]
    return _masked_mean_of(vectors, np.repeat(walks, width + 1, axis=0), np.tile(present, (len(walks), 1)))


def _masked_mean(vectors: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of [n, k, ...] vectors where present[n, k]."""
    weights = present / np.maximum(present.sum(axis=1, keepdims=True), 1)
    return np.einsum("nk,nk...->n...", weights, vectors)


def _masked_mean_of(table: np.ndarray, members: np.ndarray, present: np.ndarray) -> np.ndarray:
    """`_masked_mean(table[members], present)` a few thousand rows at a time: the same numbers
    (each row is the same einsum), but the gathered vectors stay in cache, not in fresh memory."""
    block = 4096
    return np.concatenate(
        [
            _masked_mean(table[members[start : start + block]], present[start : start + block])
            for start in range(0, len(members), block)
        ]
    )


class World:
    """The catalogues, their latent vectors and the calibrated biases of one seed."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
        dim = config.latent_dim
        rows = config.rows

        # Catalogue sizes scale with the rows in the catalogue's shape (by default like the
        # real sample: 4,322 impressions came from 500 users and 4,191 distinct videos of
        # 3,213 providers).
        self.n_users = max(20, int(round(rows / config.impressions_per_user)))
        self.n_videos = int(min(max(200, rows / config.impressions_per_video), MAX_VIDEOS))
        self.n_providers = max(50, int(config.providers_per_video * self.n_videos))
        n_category2 = N_CATEGORY1 * CATEGORY2_PER_CATEGORY1

        # Attribute vocabularies and their latent vectors.
        category1_vec = _latent(rng, N_CATEGORY1, dim, 1.0)
        category2_vec = _latent(rng, n_category2, dim, 0.7)
        keyword_vec = _latent(rng, N_KEYWORDS, dim, 0.8)
        tag_vec = _latent(rng, N_TAGS, dim, 0.6)
        provider_vec = _latent(rng, self.n_providers, dim, config.provider_scale)
        group_vec = _latent(rng, N_USER_GROUPS, dim, 0.6)
        age_vec = _latent(rng, N_AGES, dim, 0.6)
        self.topic_keywords = rng.integers(0, N_KEYWORDS, size=(n_category2, KEYWORDS_PER_TOPIC))
        self.topic_tags = rng.integers(0, N_TAGS, size=(n_category2, TAGS_PER_TOPIC))

        # Videos: popularity rank = index; attributes; length in seconds.
        n = self.n_videos
        self.video_category2 = rng.integers(0, n_category2, size=n)
        self.video_category1 = self.video_category2 // CATEGORY2_PER_CATEGORY1
        self.video_provider = np.where(
            rng.random(n) < 0.3,
            np.minimum(rng.zipf(1.5, size=n) - 1, self.n_providers - 1),
            rng.integers(0, self.n_providers, size=n),
        )
        # A video's keywords (tags) are row video_keyword_walk[v] of keyword_walks (tag_...),
        # of which the first video_keyword_count[v] (video_tag_count[v]) are its own.
        self.keyword_walks, self.video_keyword_walk = _topic_walks(
            rng, self.topic_keywords, self.video_category2, KEYWORD_LENGTH[0]
        )
        self.video_keyword_count = _lengths(rng, n, KEYWORD_LENGTH)
        self.tag_walks, self.video_tag_walk = _topic_walks(rng, self.topic_tags, self.video_category2, TAG_LENGTH[0])
        self.video_tag_count = _lengths(rng, n, TAG_LENGTH)
        self.video_seconds = np.clip(np.exp(rng.normal(np.log(150.0), 0.9, size=n)), 5.0, 3600.0)
        self.video_cover_quality = rng.integers(0, N_COVER_QUALITIES, size=n)
        self._category1_vec = category1_vec
        self._category2_vec = category2_vec
        self._keyword_walk_means = _walk_means(keyword_vec, self.keyword_walks)
        self._tag_walk_means = _walk_means(tag_vec, self.tag_walks)
        self._provider_vec = provider_vec
        # The idiosyncratic part of a video's vector comes from a hash of its index, so that
        # vectors need only be computed for the videos drawn (catalogues reach millions).
        self._video_noise_seed = int(rng.integers(0, 2**31))

        # Users: activity is long-tailed (log-normal), preferences tie them to categories.
        self.user_activity = np.exp(rng.normal(0.0, 0.75, size=self.n_users))
        self.user_activity /= self.user_activity.sum()
        self.user_group = rng.integers(0, N_USER_GROUPS, size=self.n_users)
        self.user_age = rng.integers(0, N_AGES, size=self.n_users)
        favourite = rng.integers(0, N_CATEGORY1, size=(self.n_users, USER_CATEGORY_LENGTH[0]))
        self.user_categories = (favourite + np.arange(USER_CATEGORY_LENGTH[0])[None, :] * 7) % N_CATEGORY1
        self.user_category_count = _lengths(rng, self.n_users, USER_CATEGORY_LENGTH)
        category_present = np.arange(USER_CATEGORY_LENGTH[0])[None, :] < self.user_category_count[:, None]
        # What the user's group, age and preferred categories tell (the production model's view).
        self.user_coarse_vec = (
            group_vec[self.user_group]
            + age_vec[self.user_age]
            + 1.5 * _masked_mean_of(category1_vec, self.user_categories, category_present)
        )
        self.user_vec = self.user_coarse_vec + _latent(rng, self.n_users, dim, config.user_own_scale)

        # Context effects, in logit units: (CTR, CVR).
        self.algorithm_effect = rng.normal(0.0, 0.3, size=(N_RECALL_ALGORITHMS, 2))
        self.algorithm_weights = rng.dirichlet(np.full(N_RECALL_ALGORITHMS, 2.0))

        calibration_rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2,)))
        calibration = self._draw(calibration_rng, rows=50_000, request_start=0)
        self._z_scale = calibration["z"].std(axis=0)
        z = calibration["z"] / self._z_scale
        self.ctr_bias = _solve_increasing(lambda b: _sigmoid(b + self._ctr_logit(z, calibration)).mean(), TARGET_CTR)
        p = _sigmoid(self.ctr_bias + self._ctr_logit(z, calibration))
        cvr_logit = self._cvr_logit(z, calibration)
        self.cvr_bias = _solve_increasing(
            lambda b: np.average(_sigmoid(b + cvr_logit), weights=p), TARGET_MEAN_WATCH_RATIO
        )
        m = _sigmoid(self.cvr_bias + cvr_logit)
        # Share of full watches: E_p[m ** gamma] decreases in gamma.
        self.full_watch_gamma = _solve_increasing(
            lambda g: -np.average(m**g, weights=p), -TARGET_FULL_WATCH_SHARE, low=1.0, high=50.0
        )
        # The production model's bias: its mean pCTR is the CTR (with its own noise draws).
        production_rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(4,)))
        production_logit = self._production_logit(calibration, production_rng.normal(0.0, 1.0, size=len(p)))
        self.production_bias = _solve_increasing(lambda b: _sigmoid(b + production_logit).mean(), TARGET_CTR)

    def _requests(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(size, user, time) of the requests that hold `rows` impressions: `_draw`'s first draws."""
        sizes = []
        total = 0
        while total < rows:
            batch = np.minimum(1 + rng.poisson(3.0, size=max(16, rows // 3)), MAX_REQUEST_SIZE)
            sizes.append(batch)
            total += int(batch.sum())
        size = np.concatenate(sizes)
        size = size[: int(np.searchsorted(np.cumsum(size), rows)) + 1]
        n_requests = len(size)
        request_user = rng.choice(self.n_users, size=n_requests, p=self.user_activity)
        request_time = rng.integers(0, self.config.days * DAY_MS, size=n_requests)
        return size, request_user, request_time

    def _draw(self, rng: np.random.Generator, rows: int, request_start: int) -> dict[str, np.ndarray]:
        """Requests of impressions with their context; no labels yet."""
        size, request_user, request_time = self._requests(rng, rows)
        n_requests = len(size)
        has_source = rng.random(n_requests) >= NO_SOURCE_RATE
        request_source = np.where(has_source, self._popular_videos(rng, n_requests), -1)

        request = np.repeat(np.arange(n_requests), size)[:rows]
        position = np.arange(len(request)) - np.repeat(np.cumsum(size) - size, size)[:rows]
        user = request_user[request]
        source = request_source[request]
        video = self._distinct_per_request(rng, request)
        algorithm = rng.choice(N_RECALL_ALGORITHMS, size=rows, p=self.algorithm_weights)

        parts = np.einsum("npd,npd->np", self.user_vec[user], self.video_vectors(video))
        rho = self.config.task_relatedness
        z = np.stack(
            [
                np.sqrt(rho) * parts[:, 0] + np.sqrt(1 - rho) * parts[:, 1],
                np.sqrt(rho) * parts[:, 0] + np.sqrt(1 - rho) * parts[:, 2],
            ],
            axis=1,
        )
        same_category = (source >= 0) & (self.video_category1[np.maximum(source, 0)] == self.video_category1[video])
        return {
            "request_no": request + request_start,
            "time_ms": request_time[request],
            "user": user,
            "video": video,
            "source_video": source,
            "algorithm": algorithm,
            "position": position,
            "same_category": same_category,
            "z": z,
        }

    def video_vectors(self, video: np.ndarray) -> np.ndarray:
        """Latent vectors [n, 3, dim] of videos: their attributes' plus their own."""
        dim = self.config.latent_dim
        keyword_mean = self._keyword_walk_means[
            self.video_keyword_walk[video] * (KEYWORD_LENGTH[0] + 1) + self.video_keyword_count[video]
        ]
        tag_mean = self._tag_walk_means[self.video_tag_walk[video] * (TAG_LENGTH[0] + 1) + self.video_tag_count[video]]
        own = _hashed_normal(self._video_noise_seed, video, (3, dim)) * (self.config.video_own_scale / np.sqrt(dim))
        return (
            self._category1_vec[self.video_category1[video]]
            + self._category2_vec[self.video_category2[video]]
            + keyword_mean
            + tag_mean
            + self._provider_vec[self.video_provider[video]]
            + own
        )

    def video_keywords(self, video: np.ndarray | int) -> np.ndarray:
        """The keyword walks of videos ([..., KEYWORD_LENGTH[0]]); a video's own are the first video_keyword_count."""
        return self.keyword_walks[self.video_keyword_walk[video]]

    def video_tags(self, video: np.ndarray | int) -> np.ndarray:
        """The tag walks of videos ([..., TAG_LENGTH[0]]); a video's own are the first video_tag_count."""
        return self.tag_walks[self.video_tag_walk[video]]

    def _distinct_per_request(self, rng: np.random.Generator, request: np.ndarray) -> np.ndarray:
        """Videos for impressions, never the same video twice in one request."""
        video = self._popular_videos(rng, len(request))
        while True:
            _, first = np.unique(request * self.n_videos + video, return_index=True)
            repeated = np.ones(len(video), dtype=bool)
            repeated[first] = False
            if not repeated.any():
                return video
            video[repeated] = rng.integers(0, self.n_videos, size=int(repeated.sum()))

    def _popular_videos(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """A long tail: a few draws from a Zipf head, the rest uniform over the catalogue."""
        head = np.minimum(rng.zipf(1.6, size=n) - 1, self.n_videos - 1)
        tail = rng.integers(0, self.n_videos, size=n)
        return np.where(rng.random(n) < 0.05, head, tail)

    def _ctr_logit(self, z: np.ndarray, draw: dict[str, np.ndarray]) -> np.ndarray:
        video = draw["video"]
        return (
            self.config.signal * z[:, 0]
            - 0.06 * np.minimum(draw["position"], 20)
            + self.algorithm_effect[draw["algorithm"], 0]
            + 0.15 * (self.video_cover_quality[video] - 2)
            + 0.4 * draw["same_category"]
        )

    def _cvr_logit(self, z: np.ndarray, draw: dict[str, np.ndarray]) -> np.ndarray:
        video = draw["video"]
        return (
            self.config.signal * z[:, 1]
            + self.algorithm_effect[draw["algorithm"], 1]
            - 0.12 * (self.video_cover_quality[video] - 2)
            - 0.35 * np.log(self.video_seconds[video] / 150.0)
            + 0.2 * draw["same_category"]
        )

    def _production_logit(self, draw: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """The production model's logit less its bias: a coarser model of this world.

        Its CTR interaction is the truth's, but of the coarse vectors only: users' group, age
        and preferred categories, videos' two category levels (no keywords, tags, providers
        or idiosyncratic parts), scaled by `production_interaction`; its context effects
        are the truth's; plus Gaussian noise of `production_noise` logit units.
        """
        video = draw["video"]
        user_vec = self.user_coarse_vec[draw["user"]]
        video_vec = self._category1_vec[self.video_category1[video]] + self._category2_vec[self.video_category2[video]]
        parts = np.einsum("npd,npd->np", user_vec[:, :2], video_vec[:, :2])
        rho = self.config.task_relatedness
        z = (np.sqrt(rho) * parts[:, 0] + np.sqrt(1 - rho) * parts[:, 1]) / self._z_scale[0]
        interaction = np.stack([self.config.production_interaction * z, np.zeros_like(z)], axis=1)
        return self._ctr_logit(interaction, draw) + self.config.production_noise * noise

    def chunk_layout(self, rows: int, chunk: int) -> tuple[int, np.ndarray]:
        """(requests, impressions per day) of `sample(rows, chunk)` from its first draws only:
        what a writer needs to number a chunk's requests and place its rows before drawing it."""
        size, _, request_time = self._requests(self._chunk_rng(chunk), rows)
        return len(size), np.bincount(np.repeat(request_time // DAY_MS, size)[:rows], minlength=self.config.days)

    def _chunk_rng(self, chunk: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(1, chunk)))

    def sample(self, rows: int, chunk: int = 0, request_start: int = 0) -> Impressions:
        """Draw `rows` impressions; chunk k of a seed is always the same."""
        rng = self._chunk_rng(chunk)
        draw = self._draw(rng, rows, request_start)
        z = draw["z"] / self._z_scale
        p_click = _sigmoid(self.ctr_bias + self._ctr_logit(z, draw))
        expected = _sigmoid(self.cvr_bias + self._cvr_logit(z, draw))
        click = (rng.random(rows) < p_click).astype(np.int64)
        full = rng.random(rows) < expected**self.full_watch_gamma
        full_share = expected**self.full_watch_gamma
        partial_mean = np.clip((expected - full_share) / np.maximum(1.0 - full_share, 1e-9), 1e-3, 1 - 1e-3)
        concentration = 3.0
        partial = rng.beta(partial_mean * concentration, (1.0 - partial_mean) * concentration)
        ratio = np.where(full, 1.0, np.clip(partial, 1e-3, 1.0))
        watch_ratio = np.where(click == 1, ratio, 0.0)
        production_pctr = _sigmoid(self.production_bias + self._production_logit(draw, rng.normal(0.0, 1.0, size=rows)))
        missing = {name: rng.random(rows) < rate for name, rate in MISSING_RATES.items()}
        source = np.maximum(draw["source_video"], 0)
        source_keyword_count = np.maximum(1, self.video_keyword_count[source] - (rng.random(rows) < 0.35))
        source_tag_count = np.minimum(self.video_tag_count[source], _lengths(rng, rows, SOURCE_TAG_LENGTH))
        order = np.lexsort((draw["position"], draw["time_ms"]))
        columns = {
            "request_no": draw["request_no"],
            "time_ms": draw["time_ms"] + self.start_ms(),
            "user": draw["user"],
            "video": draw["video"],
            "source_video": draw["source_video"],
            "algorithm": draw["algorithm"],
            "position": draw["position"],
            "p_click": p_click,
            "expected_watch_ratio": expected,
            "click": click,
            "watch_ratio": watch_ratio,
            "production_pctr": production_pctr,
            "source_keyword_count": source_keyword_count,
            "source_tag_count": source_tag_count,
        }
        return Impressions(
            **{key: value[order] for key, value in columns.items()},
            missing={name: flags[order] for name, flags in missing.items()},
        )

    def day_of(self, time_ms: np.ndarray) -> np.ndarray:
        """The day index (0-based from `start_day`) of unix-ms timestamps."""
        return (time_ms - self.start_ms()) // DAY_MS

    def start_ms(self) -> int:
        start = dt.datetime.combine(self.config.start_day, dt.time(), tzinfo=dt.timezone.utc)
        return int(start.timestamp() * 1000)


def duration_bucket(seconds: np.ndarray) -> np.ndarray:
    """The log's FEA_DURATION: index of the length bucket."""
    return np.searchsorted(np.asarray(features.DURATION_BUCKET_EDGES_SECONDS), seconds, side="right")


def _hashed_normal(seed: int, keys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals of `shape` per key, a pure function of (seed, key): splitmix64 + Box-Muller,
    a few thousand keys at a time (their integers stay in cache: 1.5x faster)."""
    width, block = int(np.prod(shape)), 2048
    normal = np.empty((len(keys), width))
    for start in range(0, len(keys), block):
        x = (
            keys[start : start + block].astype(np.uint64)[:, None] * np.uint64(2 * width)
            + np.arange(2 * width, dtype=np.uint64)[None, :]
        )
        x += np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        x >>= np.uint64(11)
        uniform = (x.astype(np.float64) + 0.5) / float(1 << 53)
        u1, u2 = uniform[:, :width], uniform[:, width:]
        normal[start : start + block] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return normal.reshape((len(keys),) + shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_increasing(f, target: float, low: float = -20.0, high: float = 20.0) -> float:
    """Bisection for f(x) = target where f increases in x."""
    for _ in range(60):
        middle = 0.5 * (low + high)
        if f(middle) < target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)
