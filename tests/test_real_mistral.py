"""The `mistral` template against Mistral's own reference tokenizer (mistral-common, fine-tuning mode), token for
token on the real v3 vocabulary (Mistral 7B Instruct v0.3): the system text joins the last user turn, the answer
follows `[/INST]` after a space, and each answer with its `</s>` is what is trained."""
import pytest

import ftkit
from conftest import CONVERSATIONS as SHARED
from real import mistral_v3

CONVERSATIONS = {**SHARED, "system, Chinese": [  # the conversations every template is checked on, and Chinese
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend."}, {"role": "user", "content": "什么是LoRA？"},
    {"role": "assistant", "content": "低秩适配。"}]}


def reference_ids(reference, messages) -> list[int]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    mode = "finetuning" if messages[-1]["role"] == "assistant" else "test"
    return reference[mode].encode_chat_completion(request).tokens


@pytest.mark.parametrize("label", sorted(CONVERSATIONS))
def test_mistral_template_equals_mistral_common_token_for_token(label):
    folder, reference = mistral_v3()
    conversation = CONVERSATIONS[label]
    seen = ftkit.render(conversation, template="mistral", model=str(folder))
    assert seen.input_ids == reference_ids(reference, conversation)
    prompt = ftkit.render(conversation[:-1], template="mistral", model=str(folder), add_generation_prompt=True)
    assert prompt.input_ids == reference_ids(reference, conversation[:-1])
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert seen.trained_text == "".join(f" {a}</s>" for a in answers)


def test_mistral_is_the_default_for_mistral_models_without_a_template():
    folder, _ = mistral_v3()  # a tokenizer without a chat_template, config model_type mistral
    seen = ftkit.render(CONVERSATIONS["one turn"], model=str(folder))
    assert seen.template == "mistral" and seen.text == "<s>[INST] What is LoRA?[/INST] Low-rank adapters.</s>"
