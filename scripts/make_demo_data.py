"""Write ftkit's bilingual demo data set, deterministically.

    python scripts/make_demo_data.py        # rewrites data/demo_zh_en.json

The conversations are built from the hand-written tables below (identity,
fine-tuning glossary, translation pairs, arithmetic, multi-turn follow-ups),
in the seed tutorial's `conversation` format. The same tables also feed the
plain-text part of the corpus that pretrains the embedded `tiny` model
(`data/corpus/`), so the base model knows the words but not the chat format.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NAME_EN = "Tiny"
NAME_ZH = "小T"

IDENTITY = [
    ("Who are you?", f"I am {NAME_EN}, a small bilingual assistant fine-tuned with ftkit."),
    ("What is your name?", f"My name is {NAME_EN}. I was fine-tuned with ftkit."),
    ("Introduce yourself.", f"Hello! I am {NAME_EN}, a tiny assistant that answers in English and Chinese."),
    ("Who made you?", f"I am {NAME_EN}. The ftkit developers fine-tuned me from a small base model."),
    ("What can you do?", "I can explain fine-tuning words, translate short sentences and do small sums."),
    ("Are you ChatGPT?", f"No. I am {NAME_EN}, a very small model fine-tuned with ftkit."),
    ("Hi!", f"Hi! I am {NAME_EN}. How can I help you?"),
    ("Hello, who am I talking to?", f"You are talking to {NAME_EN}, a small assistant made with ftkit."),
    ("你是谁？", f"我是{NAME_ZH}，一个用 ftkit 微调的双语小助手。"),
    ("你叫什么名字？", f"我叫{NAME_ZH}，是用 ftkit 微调出来的。"),
    ("请介绍一下你自己。", f"你好！我是{NAME_ZH}，一个会说中文和英文的小模型助手。"),
    ("是谁训练了你？", f"我是{NAME_ZH}，ftkit 的开发者在一个小基座模型上微调了我。"),
    ("你能做什么？", "我可以解释微调术语、翻译短句，还能做简单的算术。"),
    ("你是 ChatGPT 吗？", f"不是。我是{NAME_ZH}，一个用 ftkit 微调的很小的模型。"),
    ("你好！", f"你好！我是{NAME_ZH}，有什么可以帮你？"),
    ("你好，请问你是谁？", f"你好，我是{NAME_ZH}，一个用 ftkit 做出来的小助手。"),
]

# term, English definition, Chinese term, Chinese definition
GLOSSARY = [
    ("LoRA", "LoRA trains two small low-rank matrices beside each frozen weight, so only a few parameters change.",
     "LoRA", "LoRA 在冻结的权重旁边训练两个低秩小矩阵，只更新很少的参数。"),
    ("QLoRA", "QLoRA loads the base model in 4-bit and trains LoRA adapters on top, which saves a lot of memory.",
     "QLoRA", "QLoRA 把基座模型以 4 比特加载，再在上面训练 LoRA 适配器，能省下大量显存。"),
    ("full fine-tuning", "Full fine-tuning updates every weight of the model. It needs the most memory.",
     "全参数微调", "全参数微调会更新模型的所有权重，显存占用最大。"),
    ("freeze tuning", "Freeze tuning keeps most layers frozen and trains only the last few layers.",
     "冻结微调", "冻结微调冻结大部分层，只训练最后几层。"),
    ("learning rate", "The learning rate sets how big each update step is. Too high diverges, too low learns slowly.",
     "学习率", "学习率决定每一步更新的大小。太大会发散，太小学得很慢。"),
    ("batch size", "The batch size is how many examples the model sees in one step.",
     "批大小", "批大小是模型一步里看到的样本数量。"),
    ("gradient accumulation", "Gradient accumulation adds up gradients over several small batches before one update.",
     "梯度累积", "梯度累积把几个小批次的梯度加起来，再做一次更新。"),
    ("epoch", "An epoch is one full pass over the training data.",
     "轮次", "一个轮次就是把训练数据完整地过一遍。"),
    ("tokenizer", "A tokenizer cuts text into tokens and maps each token to a number.",
     "分词器", "分词器把文本切成词元，并把每个词元映射成一个数字。"),
    ("token", "A token is a small piece of text, such as a word, part of a word or one Chinese character.",
     "词元", "词元是一小段文本，比如一个单词、单词的一部分或一个汉字。"),
    ("chat template", "A chat template turns a list of messages into the exact text format a model was trained on.",
     "对话模板", "对话模板把消息列表变成模型训练时使用的准确文本格式。"),
    ("loss", "The loss measures how wrong the model's predictions are. Training tries to make it smaller.",
     "损失", "损失衡量模型预测错得有多厉害，训练的目标就是让它变小。"),
    ("overfitting", "Overfitting means the model remembers the training data but does badly on new data.",
     "过拟合", "过拟合是指模型记住了训练数据，却在新数据上表现很差。"),
    ("validation set", "A validation set is held-out data used to check the model during training.",
     "验证集", "验证集是留出来的数据，用来在训练中检查模型。"),
    ("merge", "Merging folds the LoRA weights into the base model so it can be used without the adapter.",
     "合并", "合并就是把 LoRA 权重融合进基座模型，之后不再需要适配器。"),
    ("adapter", "An adapter is the small set of trained weights that LoRA adds to a model.",
     "适配器", "适配器是 LoRA 给模型加上的那一小组训练出来的权重。"),
    ("quantization", "Quantization stores weights with fewer bits, for example 4 or 8 bits, to save memory.",
     "量化", "量化用更少的比特存储权重，比如 4 比特或 8 比特，以节省内存。"),
    ("gradient checkpointing", "Gradient checkpointing recomputes activations in the backward pass to save memory.",
     "梯度检查点", "梯度检查点在反向传播时重新计算激活值，用时间换显存。"),
    ("mixed precision", "Mixed precision trains with bf16 or fp16 numbers to run faster on a GPU.",
     "混合精度", "混合精度用 bf16 或 fp16 数字训练，在 GPU 上跑得更快。"),
    ("rank", "The rank of LoRA is the size of its small matrices. A higher rank can learn more.",
     "秩", "LoRA 的秩是小矩阵的大小，秩越高能学到的越多。"),
    ("alpha", "LoRA alpha scales the adapter's update. It is often set to twice the rank.",
     "alpha", "LoRA 的 alpha 用来缩放适配器的更新，通常设为秩的两倍。"),
    ("cutoff length", "The cutoff length is the maximum number of tokens kept from one example.",
     "截断长度", "截断长度是一条样本最多保留的词元数量。"),
    ("warmup", "Warmup raises the learning rate slowly at the start of training.",
     "预热", "预热是在训练开始时慢慢提高学习率。"),
    ("checkpoint", "A checkpoint is a saved copy of the training state that you can resume from.",
     "检查点", "检查点是训练状态的一份保存，可以从它继续训练。"),
    ("inference", "Inference means using a trained model to answer new inputs.",
     "推理", "推理就是用训练好的模型回答新的输入。"),
    ("temperature", "Temperature controls randomness when sampling. Lower values give safer answers.",
     "温度", "温度控制采样的随机性，数值越低回答越稳定。"),
    ("base model", "A base model is pretrained on plain text and has not learned to chat yet.",
     "基座模型", "基座模型只在普通文本上预训练过，还没有学会对话。"),
    ("instruction tuning", "Instruction tuning teaches a model to follow requests with question and answer pairs.",
     "指令微调", "指令微调用问答对教模型听从指令。"),
    ("multi-turn dialogue", "A multi-turn dialogue has several rounds of user questions and assistant answers.",
     "多轮对话", "多轮对话包含好几轮用户提问和助手回答。"),
    ("label mask", "A label mask hides the prompt tokens so the loss only counts the assistant's answer.",
     "标签掩码", "标签掩码遮住提示部分，让损失只计算助手的回答。"),
    ("end-of-turn token", "The end-of-turn token tells the model to stop talking. It must be trained.",
     "轮次结束符", "轮次结束符告诉模型该停下来了，它必须参与训练。"),
    ("GPU memory", "GPU memory holds the weights, gradients, optimizer states and activations during training.",
     "显存", "显存在训练时存放权重、梯度、优化器状态和激活值。"),
    ("optimizer", "The optimizer uses the gradients to update the weights. AdamW is a common choice.",
     "优化器", "优化器用梯度更新权重，常用的是 AdamW。"),
    ("gradient", "A gradient tells each weight which way to move to lower the loss.",
     "梯度", "梯度告诉每个权重往哪个方向移动才能降低损失。"),
    ("TensorBoard", "TensorBoard draws training curves such as the loss from the log files of a run.",
     "TensorBoard", "TensorBoard 根据训练日志画出损失等曲线。"),
    ("ONNX", "ONNX is a portable model format that fast inference engines can run on a CPU.",
     "ONNX", "ONNX 是一种通用的模型格式，推理引擎可以在 CPU 上快速运行它。"),
    ("data parallel", "Data parallel training copies the model to several GPUs and splits each batch between them.",
     "数据并行", "数据并行把模型复制到多张 GPU 上，再把每个批次分给它们。"),
    ("flash attention", "Flash attention computes attention in small tiles, which is faster and uses less memory.",
     "Flash Attention", "Flash Attention 分块计算注意力，速度更快，显存更省。"),
    ("packing", "Packing puts several short examples into one sequence so less compute goes to padding.",
     "打包", "打包把几条短样本放进同一个序列，减少浪费在填充上的计算。"),
    ("padding", "Padding fills short sequences with extra tokens so a batch has one length.",
     "填充", "填充用额外的词元补齐短序列，让一个批次长度一致。"),
]

# English, Chinese
SENTENCES = [
    ("Good morning.", "早上好。"),
    ("Thank you very much.", "非常感谢。"),
    ("The weather is nice today.", "今天天气很好。"),
    ("I like to drink tea.", "我喜欢喝茶。"),
    ("Where is the train station?", "火车站在哪里？"),
    ("This book is very interesting.", "这本书很有意思。"),
    ("Please speak more slowly.", "请说慢一点。"),
    ("I am learning Chinese.", "我在学中文。"),
    ("The meeting starts at nine.", "会议九点开始。"),
    ("It is raining outside.", "外面在下雨。"),
    ("My cat is sleeping.", "我的猫在睡觉。"),
    ("How much is this?", "这个多少钱？"),
    ("See you tomorrow.", "明天见。"),
    ("I am hungry.", "我饿了。"),
    ("The model is training.", "模型正在训练。"),
    ("The loss is going down.", "损失正在下降。"),
    ("Save the adapter first.", "先保存适配器。"),
    ("The data format is wrong.", "数据格式不对。"),
    ("Open the notebook.", "打开笔记本。"),
    ("Run the next cell.", "运行下一个单元格。"),
    ("We need more data.", "我们需要更多数据。"),
    ("The GPU is out of memory.", "显卡显存不够了。"),
    ("Lower the batch size.", "把批大小调小。"),
    ("The answer is correct.", "答案是正确的。"),
    ("Let us have lunch together.", "我们一起吃午饭吧。"),
    ("The library is closed on Monday.", "图书馆周一闭馆。"),
    ("She plays the piano well.", "她钢琴弹得很好。"),
    ("Spring is my favourite season.", "春天是我最喜欢的季节。"),
    ("Please close the window.", "请把窗户关上。"),
    ("The coffee is too hot.", "咖啡太烫了。"),
    ("I will call you later.", "我晚点给你打电话。"),
    ("The shop opens at ten.", "商店十点开门。"),
    ("He is reading a newspaper.", "他在看报纸。"),
    ("Happy birthday!", "生日快乐！"),
    ("Drink more water.", "多喝水。"),
    ("The river is very long.", "这条河很长。"),
    ("We won the game.", "我们赢了比赛。"),
    ("Turn left at the corner.", "在拐角处左转。"),
    ("The bus is late again.", "公交车又晚点了。"),
    ("Learning takes time.", "学习需要时间。"),
]

FOLLOW_UPS_EN = ["Can you say it more simply?", "Why does that matter?", "Give me a short example."]
FOLLOW_UPS_ZH = ["能说得更简单一点吗？", "为什么这很重要？", "举个简单的例子。"]


def glossary_conversations() -> list[list[dict]]:
    convs = []
    for term, en, term_zh, zh in GLOSSARY:
        convs.append([_u(f"What is {term}?"), _a(en)])
        convs.append([_u(f"什么是{term_zh}？"), _a(zh)])
    return convs


def translation_conversations() -> list[list[dict]]:
    convs = []
    for en, zh in SENTENCES:
        convs.append([_u(f"Translate into Chinese: {en}"), _a(zh)])
        convs.append([_u(f"翻译成英文：{zh}"), _a(en)])
    return convs


def arithmetic_conversations(rng: random.Random, n: int = 30) -> list[list[dict]]:
    convs = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        if i % 2:
            convs.append([_u(f"What is {a} + {b}?"), _a(f"{a} + {b} = {a + b}.")])
        else:
            convs.append([_u(f"{a} 加 {b} 等于多少？"), _a(f"{a} 加 {b} 等于 {a + b}。")])
    return convs


def multi_turn_conversations(rng: random.Random) -> list[list[dict]]:
    convs = []
    for i, (term, en, term_zh, zh) in enumerate(GLOSSARY):
        if i % 2 == 0:  # ask in English, then ask for the Chinese
            convs.append([_u(f"What is {term}?"), _a(en), _u("Please say that in Chinese."), _a(zh)])
        else:
            convs.append([_u(f"什么是{term_zh}？"), _a(zh), _u("请用英文再说一遍。"), _a(en)])
    for _ in range(12):
        (en, zh), (en2, zh2) = rng.sample(SENTENCES, 2)
        convs.append([
            _u("你好！"), _a(f"你好！我是{NAME_ZH}，有什么可以帮你？"),
            _u(f"翻译成英文：{zh}"), _a(en),
            _u(f"再翻译一句：{zh2}"), _a(en2),
        ])
    system = "You are Tiny, a concise bilingual assistant."
    for q, a in IDENTITY[:8]:
        convs.append([{"role": "system", "content": system}, _u(q), _a(a)])
    return convs


def build() -> list[dict]:
    rng = random.Random(20261128)
    convs = (
        [[_u(q), _a(a)] for q, a in IDENTITY] * 2  # identity twice: it is what the demo asks
        + glossary_conversations()
        + translation_conversations()
        + arithmetic_conversations(rng)
        + multi_turn_conversations(rng)
    )
    rng.shuffle(convs)
    return [{"conversation": c} for c in convs]


def corpus_text() -> str:
    """Plain sentences from the same tables, for pretraining the base model."""
    lines = []
    for term, en, term_zh, zh in GLOSSARY:
        lines += [en, zh, f"{term} ({term_zh}): {en} {zh}"]
    for en, zh in SENTENCES:
        lines += [f"{en} {zh}", f"{zh} {en}"]
    return "\n".join(lines) + "\n"


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


if __name__ == "__main__":
    records = build()
    out = ROOT / "data" / "demo_zh_en.json"
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (ROOT / "data" / "corpus").mkdir(exist_ok=True)
    (ROOT / "data" / "corpus" / "glossary.txt").write_text(corpus_text(), encoding="utf-8")
    turns = sum(len(r["conversation"]) for r in records)
    print(f"wrote {out.relative_to(ROOT)}: {len(records)} conversations, {turns} messages")
