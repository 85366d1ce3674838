"""The server as users meet it: a real ``python -m dschat.serve`` process on a loopback port, driven by the official
``openai`` client, httpx and a headless chromium; answers checked against dschat's chatbot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from dschat import run_dir
from dschat.inference import generation, loading
from dschat.inference.chat import ChatSession
from dschat.utils.data import prompts
from dschat.utils.save import save_hf_format

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

KEY = "test-key"
MAX_QUEUE = 24
SYSTEM = "You are Pip, a cheerful lighthouse keeper."
QUESTIONS = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]
START_TIMEOUT_SECONDS = 180


@dataclass
class Server:
    url: str
    model_dir: Path
    model_id: str
    log: Path

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def post(self, route: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(f"{self.url}{route}", content=content, headers=headers, timeout=60, **kwargs)


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer /health in {START_TIMEOUT_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory):
    """A tiny OPT saved as a training run saves it (upstream format), served on a free loopback port."""
    from conftest import free_port

    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "tiny-chat"
    source = tiny_models["opt"]
    tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source)
    save_hf_format(model, tokenizer, model_dir, run_info=run_dir.run_info(prompts.UPSTREAM, {}))
    port, log = free_port(), root / "server.log"
    command = [sys.executable, "-m", "dschat.serve", "--path", str(model_dir), "--port", str(port)]
    command += ["--api_key", KEY, "--max_queue", str(MAX_QUEUE), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DSCHAT_API_KEY": ""}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
        yield Server(url, model_dir, model_dir.name, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def chatbot(server):
    """dschat's chatbot on the served directory: the reference answers."""
    model, tokenizer = loading.load_model(str(server.model_dir))

    def answer(question: str, max_new_tokens: int, system: str | None = None, history=()) -> tuple[str, int]:
        settings = generation.GenerationSettings(max_new_tokens=max_new_tokens)
        session = ChatSession(model, tokenizer, prompts.UPSTREAM, settings, system=system)
        session.history = list(history)
        prompt_tokens = len(session.prompt_ids(question))
        return session.reply(question), prompt_tokens

    return answer


def client(server: Server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_openai_client_chat_stream_and_non_stream_equal_the_chatbot(server, chatbot):
    api = client(server)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    expected, prompt_tokens = chatbot(QUESTIONS[0], 12, SYSTEM)
    reply = api.chat.completions.create(
        model=server.model_id, messages=messages, max_tokens=12, temperature=0
    )
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == prompt_tokens
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens

    stream = api.chat.completions.create(
        model=server.model_id,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    assert [m.id for m in api.models.list().data] == [server.model_id]
    completion = api.completions.create(model=server.model_id, prompt=" Human: hi Assistant:", max_tokens=6)
    assert isinstance(completion.choices[0].text, str) and completion.usage.completion_tokens <= 6
    sampled = [
        api.chat.completions.create(
            model=server.model_id, messages=messages, max_tokens=8, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # a seed makes sampling reproducible


BAD_REQUESTS = [
    # (route, body, key, status, param)
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        None,
        401,
        None,
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        "bad",
        401,
        None,
    ),
    ("/v1/models", {}, None, 401, None),
    ("/v1/chat/completions", "{not json", KEY, 400, None),
    ("/v1/chat/completions", "[" * 100_000, KEY, 400, None),
    ("/v1/chat/completions", [1, 2], KEY, 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, KEY, 400, "model"),
    (
        "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        KEY,
        404,
        "model",
    ),
    ("/v1/chat/completions", {"model": "tiny-chat"}, KEY, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}] * 65},
        KEY,
        400,
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x" * 32_001}]},
        KEY,
        400,
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "tool", "content": "x"}]},
        KEY,
        400,
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": 5}]},
        KEY,
        400,
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "assistant", "content": "x"}]},
        KEY,
        400,
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        KEY,
        400,
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
        KEY,
        400,
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "temperature": -1},
        KEY,
        400,
        "temperature",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "top_p": 0},
        KEY,
        400,
        "top_p",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "stop": list("abcde")},
        KEY,
        400,
        "stop",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "n": 2},
        KEY,
        400,
        "n",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        KEY,
        400,
        "stream",
    ),
    ("/v1/completions", {"model": "tiny-chat"}, KEY, 400, "prompt"),
    (
        "/v1/completions",
        {"model": "tiny-chat", "prompt": "x " * 400},
        KEY,
        400,
        "prompt",
    ),  # past the 256 context
]


@pytest.mark.parametrize("route,body,key,status,param", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_naming_the_field(server, route, body, key, status, param):
    response = server.post(route, body, key=key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if status == 401:
        assert error["code"] == "invalid_api_key"


def test_open_routes_and_unknown_routes(server):
    assert server.health()["status"] == "ok"  # no key needed: a load balancer probes it
    page = httpx.get(server.url, timeout=10)
    assert page.status_code == 200 and "<title>dschat</title>" in page.text
    missing = httpx.get(f"{server.url}/v1/nope", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()


def test_sixteen_parallel_requests_equal_one_at_a_time(server, chatbot):
    def ask(question: str) -> str:
        body = {
            "model": server.model_id,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 16,
        }
        response = server.post("/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    one_at_a_time = [ask(q) for q in QUESTIONS]
    assert one_at_a_time[:2] == [chatbot(q, 16)[0] for q in QUESTIONS[:2]]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        parallel = list(pool.map(ask, QUESTIONS))
    assert parallel == one_at_a_time
    assert server.health()["largest_batch"] > 1  # they really were batched


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_its_generation(server, stream):
    before = server.health()["requests_cancelled"]
    body = {"model": server.model_id, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    body["max_tokens"] = 220  # most of the 256-token context: seconds, far longer than the client waits
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    if stream:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
            assert next(r.iter_lines()).startswith("data: ")
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(url, json=body, headers=headers, timeout=0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = server.health()
        if health["requests_cancelled"] > before and health["running"] == 0:
            break
        time.sleep(0.05)
    assert health["requests_cancelled"] == before + 1, health


def test_full_queue_answers_429_with_retry_after_and_others_succeed(server):
    body = {"model": server.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
    with ThreadPoolExecutor(MAX_QUEUE + 16) as pool:
        responses = list(pool.map(lambda _: server.post("/v1/chat/completions", body), range(MAX_QUEUE + 16)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "queue_full"
    answers = {r.json()["choices"][0]["message"]["content"] for r in responses if r.status_code == 200}
    assert len(answers) == 1  # the same greedy answer for every accepted request


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,700",
]


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER, reason="needs Debian's chromium and chromium-driver"
)
def test_chat_page_streams_an_answer_in_a_real_browser(server, chatbot, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        driver.find_element(By.ID, "api_key").send_keys(KEY)
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("12")
        driver.find_element(By.ID, "system").send_keys(SYSTEM)
        history = []
        for question in QUESTIONS[:2]:  # two turns: the second is answered with the first in its history
            driver.find_element(By.ID, "input").send_keys(question)
            driver.find_element(By.ID, "send").click()
            turns = len(history) // 2 + 1
            wait.until(lambda d, n=turns: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) == n)
            expected = chatbot(question, 12, SYSTEM, history)[0]
            assert driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text == expected.strip()
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": expected}]
        assert driver.find_element(By.ID, "model").text == server.model_id
        driver.save_screenshot(str(tmp_path / "chat_page.png"))  # the test's artefact
        assert (tmp_path / "chat_page.png").stat().st_size > 0

        # Stop: a long answer is cut off, the page is ready again and the server stops generating it.
        cancelled = server.health()["requests_cancelled"]
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("150")
        driver.find_element(By.ID, "clear").click()
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg")
        driver.find_element(By.ID, "input").send_keys("hi")
        driver.find_element(By.ID, "send").click()
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())
        wait.until(lambda d: server.health()["requests_cancelled"] == cancelled + 1)
    finally:
        driver.quit()


def test_bad_flags_are_one_line_errors(capsys, tmp_path):
    from dschat.errors import run_cli
    from dschat.serve.cli import main

    assert run_cli(main, ["--path", str(tmp_path / "missing"), "--port", "70000", "--max_queue", "0"]) == 2
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1 and "--path" in error and "--port 70000" in error and "--max_queue 0" in error
    )


def test_adapter_dir_is_served_in_its_runs_prompt_format(tmp_path):
    trained_template = run_dir.trained_prompt_template
    adapter = tmp_path / "out" / run_dir.LORA_ADAPTER_DIR
    adapter.mkdir(parents=True)
    (adapter / run_dir.ADAPTER_CONFIG_NAME).write_text("{}")
    run_dir.write_run_info(tmp_path / "out", run_dir.run_info(prompts.CHAT_TEMPLATE, {}))
    assert trained_template(str(adapter), None) == prompts.CHAT_TEMPLATE
    assert trained_template(str(adapter), prompts.UPSTREAM) == prompts.UPSTREAM  # the flag wins
