"""The README's Python API tour: train with the rooted loss, quantize with GPTQ and GPFQ, pack, reload."""

from losslab.data import calibration_loader
from losslab.quant import GPFQ, GPTQ, RTN, load_packed, quantize, save_packed
from losslab.train import TrainConfig, evaluate_model, fit, load_run
from losslab.train.build import make_loaders

result = fit(
    TrainConfig(
        dataset="digits",
        model="small_cnn",
        loss="root",
        k=3,
        m=3,
        epochs=10,
        out_dir="runs",
        run_name="api-tour",
        overwrite=True,
        progress=False,
    )
)
print(f"float test accuracy {result.test_acc:.2f}%  ({result.num_params:,} parameters)")

run = load_run(result.run_dir)
test = make_loaders(run.config).test
calib = calibration_loader("digits", n_samples=256, batch_size=64, seed=0)
for method in (GPTQ(bits=3, act_order=True), GPFQ(bits=3), GPFQ(bits=3, grid="gpfq")):
    q = quantize(run.model, method, calib, overrides={"fc": RTN(bits=8)}, progress=False)
    acc = evaluate_model(q.model, test)["top1"]
    s = q.summary()
    print(
        f"{method.describe():34s} top-1 {acc:.2f}%  {s['avg_bits_per_weight']:.2f} bits/weight  "
        f"mean SQNR {s['mean_sqnr_db']:.1f} dB"
    )

size = save_packed(q, "runs/api-tour/gpfq3.safetensors")
packed = load_packed("runs/api-tour/gpfq3.safetensors")
print(f"packed file {size:,} bytes; reloaded top-1 {evaluate_model(packed, test)['top1']:.2f}%")
