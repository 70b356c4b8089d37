"""Check sentences of the int8 step (:mod:`cnmt.exporters.quantize`), per family: real text in
the model's source language that the fp32 and int8 exports both decode (written for this
project). The BiLSTM and GRU built from a config take theirs from the config's corpus."""

from __future__ import annotations

# Everyday Chinese sentences for cn2en's int8 check, every character in cn2en's vocabulary.
CN2EN_CHECK_TEXTS = (
    "我们走吧。",
    "我不知道。",
    "今天天气很好。",
    "你叫什么名字？",
    "我喜欢喝茶。",
    "他明天要去北京。",
    "这本书很有意思。",
    "请再说一遍。",
    "我的妈妈是老师。",
    "你想吃什么？",
    "火车站在哪里？",
    "我们一起去看电影吧。",
    "她每天早上跑步。",
    "这个问题很难。",
    "我现在很忙。",
    "你会说中文吗？",
    "他们住在一个小城市。",
    "我昨天买了一台新电脑。",
    "外面下雨了。",
    "谢谢你的帮助。",
    "我想学习日语。",
    "你几点起床？",
    "这是我的朋友。",
    "我们没有时间了。",
)

# English sentences for Marian's int8 check, beside the export validation's own four.
MARIAN_CHECK_TEXTS = (
    "My brother works in a hospital near the river.",
    "Could you tell me how much this costs?",
    "The meeting has been postponed until next Tuesday.",
    "We need more time to finish the report.",
    "It rained all day, so we stayed at home.",
    "The government announced new measures to support small businesses.",
    "He forgot his umbrella on the bus.",
    "Please send me the documents before Friday.",
    "The children are playing in the garden.",
    "What time does the museum open tomorrow?",
    "Prices rose by three percent last year.",
    "I have never seen such a beautiful sunset.",
)
