"""Check sentences of the int8 step (:mod:`cnmt.exporters.quantize`), per family: real text in
the model's source language that the fp32 and int8 exports both decode (written for this
project). The BiLSTM and GRU built from a config take theirs from the config's corpus; the
packaged trained ones (``--pretrained``) these."""

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

# French sentences for the int8 check of the trained GRU FR-EN (`--pretrained gru-fr-en`).
FRENCH_CHECK_TEXTS = (
    "Je ne sais pas où il habite.",
    "Nous allons au marché demain matin.",
    "Elle a oublié son parapluie dans le train.",
    "Pourquoi es-tu en retard aujourd'hui ?",
    "Il fait très froid ce soir.",
    "Mon frère travaille dans un hôpital.",
    "Peux-tu m'aider à porter cette valise ?",
    "Les enfants jouent dans le jardin.",
    "J'ai lu ce livre l'année dernière.",
    "Le train part à huit heures.",
    "Nous avons besoin de plus de temps.",
    "Tom a acheté une nouvelle voiture.",
    "Ferme la fenêtre, s'il te plaît.",
    "Je voudrais une tasse de café.",
    "Ils ne sont pas encore arrivés.",
    "C'est la première fois que je viens ici.",
)

# German sentences for the int8 check of the trained BiLSTM DE-EN (`--pretrained bilstm-de-en`).
GERMAN_CHECK_TEXTS = (
    "Ich weiß nicht, wo er wohnt.",
    "Wir gehen morgen früh auf den Markt.",
    "Sie hat ihren Regenschirm im Zug vergessen.",
    "Warum kommst du heute so spät?",
    "Heute Abend ist es sehr kalt.",
    "Mein Bruder arbeitet in einem Krankenhaus.",
    "Kannst du mir helfen, den Koffer zu tragen?",
    "Die Kinder spielen im Garten.",
    "Ich habe das Buch letztes Jahr gelesen.",
    "Der Zug fährt um acht Uhr ab.",
    "Wir brauchen mehr Zeit.",
    "Tom hat ein neues Auto gekauft.",
    "Mach bitte das Fenster zu.",
    "Ich hätte gern eine Tasse Kaffee.",
    "Sie sind noch nicht angekommen.",
    "Ich bin zum ersten Mal hier.",
)

# Portuguese sentences for the int8 check of bergamot-pt-en (English: MARIAN_CHECK_TEXTS).
PORTUGUESE_CHECK_TEXTS = (
    "Eu não sei onde ele mora.",
    "Vamos ao mercado amanhã de manhã.",
    "Ela esqueceu o guarda-chuva no trem.",
    "Por que você chegou atrasado hoje?",
    "Está muito frio esta noite.",
    "Meu irmão trabalha em um hospital.",
    "Você pode me ajudar a carregar esta mala?",
    "As crianças estão brincando no jardim.",
    "Li este livro no ano passado.",
    "O trem sai às oito horas.",
    "Precisamos de mais tempo.",
    "O governo anunciou novas medidas para as pequenas empresas.",
)

# The built-in check sentences of the packaged trained RNNs, by `--pretrained` name.
PRETRAINED_CHECK_TEXTS = {
    "gru-fr-en": ("French", FRENCH_CHECK_TEXTS),
    "bilstm-de-en": ("German", GERMAN_CHECK_TEXTS),
}
