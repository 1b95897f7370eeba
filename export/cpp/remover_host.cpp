// remover_host: run a MiniMax-Remover engine bundle (VAE encode -> unrolled sampler -> VAE decode)
// on raw tensors, without Python.
//
//   remover_host BUNDLE INPUT_DIR OUTPUT_DIR [--backend aoti|tensorrt|onnxruntime] [--device cpu|cuda]
//
//   INPUT_DIR/video.f32    [2, 3, F, H, W]  masked video and mask video in [-1, 1] (the manifest's
//                                           input_normalization says how to make them from frames)
//   INPUT_DIR/noise.f32    [1, z, T, h, w]  the initial noise
//   OUTPUT_DIR/latents.f32 [1, z, T, h, w]  clean latents
//   OUTPUT_DIR/video.f32   [1, 3, F, H, W]  the decoded video in [-1, 1]
//
// Raw files are little-endian float32 in C order without a header; shapes come from the graphs
// (BUNDLE/aoti/<graph>.pt2 carry them as metadata; engines and ONNX sessions report them) and F, T
// from the file sizes. The graph files have fixed names, listed in BUNDLE/manifest.json.
//
// Backends: "aoti" (libtorch + AOTInductor packages) is always built. "tensorrt" and "onnxruntime"
// exist only when CMake found their headers (REMOVER_WITH_TENSORRT / REMOVER_WITH_ONNXRUNTIME);
// neither has been compiled on the machine this was written on (no TensorRT, no ONNX Runtime headers).

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef REMOVER_WITH_TENSORRT
#include <NvInfer.h>
#include <cuda_runtime_api.h>
#endif
#ifdef REMOVER_WITH_ONNXRUNTIME
#include <onnxruntime_cxx_api.h>
#endif

namespace {

constexpr int64_t kNextChunkFrames = 4;  // video frames per encoder chunk after the first
using Shape = std::vector<int64_t>;      // -1 marks a dynamic axis

// One graph of the bundle: fp32 tensors in, fp32 tensors out, in the manifest's order.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) = 0;
  std::vector<Shape> input_shapes;
};

// "video:2x3x1x64x96;cache_in_0:2x3x2x64x96" -> shapes (a named axis becomes -1)
std::vector<Shape> parse_signature(const std::string& text) {
  std::vector<Shape> shapes;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ';')) {
    Shape shape;
    std::stringstream dims(item.substr(item.find(':') + 1));
    std::string dim;
    while (std::getline(dims, dim, 'x')) {
      shape.push_back(std::isdigit(static_cast<unsigned char>(dim[0])) ? std::stoll(dim) : -1);
    }
    shapes.push_back(shape);
  }
  return shapes;
}

class AotiGraph : public Graph {
 public:
  explicit AotiGraph(const std::string& path) : loader_(path) {
    input_shapes = parse_signature(loader_.get_metadata().at("inputs"));
  }
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override { return loader_.run(inputs); }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

#ifdef REMOVER_WITH_TENSORRT
class TrtLogger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "tensorrt: " << message << "\n";
  }
};

// A serialized TensorRT 10 engine run with enqueueV3 on its own stream; tensors must be on the GPU.
class TensorRTGraph : public Graph {
 public:
  explicit TensorRTGraph(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    std::vector<char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(data.data(), data.size()));
    if (!engine_) throw std::runtime_error("TensorRT cannot deserialize " + path);
    context_.reset(engine_->createExecutionContext());
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      nvinfer1::Dims dims = engine_->getTensorShape(name);
      if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
        inputs_.push_back(name);
        input_shapes.emplace_back(dims.d, dims.d + dims.nbDims);
      } else {
        outputs_.push_back(name);
      }
    }
    if (cudaStreamCreate(&stream_) != cudaSuccess) throw std::runtime_error("cannot create a CUDA stream");
  }
  ~TensorRTGraph() override { cudaStreamDestroy(stream_); }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override {
    for (size_t i = 0; i < inputs.size(); ++i) {
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(inputs[i].dim());
      for (int32_t d = 0; d < dims.nbDims; ++d) dims.d[d] = inputs[i].size(d);
      context_->setInputShape(inputs_[i].c_str(), dims);
      context_->setTensorAddress(inputs_[i].c_str(), inputs[i].data_ptr());
    }
    std::vector<at::Tensor> outputs;
    for (const auto& name : outputs_) {
      nvinfer1::Dims dims = context_->getTensorShape(name.c_str());
      outputs.push_back(at::empty(Shape(dims.d, dims.d + dims.nbDims), inputs[0].options()));
      context_->setTensorAddress(name.c_str(), outputs.back().data_ptr());
    }
    if (!context_->enqueueV3(stream_) || cudaStreamSynchronize(stream_) != cudaSuccess) {
      throw std::runtime_error("TensorRT failed to run an engine");
    }
    return outputs;
  }

 private:
  TrtLogger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<std::string> inputs_, outputs_;
  cudaStream_t stream_{};
};
#endif

#ifdef REMOVER_WITH_ONNXRUNTIME
// An ONNX graph in an ONNX Runtime session on the CPU.
class OrtGraph : public Graph {
 public:
  explicit OrtGraph(const std::string& path) : session_(env(), path.c_str(), Ort::SessionOptions{}) {
    Ort::AllocatorWithDefaultOptions allocator;
    for (size_t i = 0; i < session_.GetInputCount(); ++i) {
      inputs_.push_back(session_.GetInputNameAllocated(i, allocator).get());
      input_shapes.push_back(session_.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape());
    }
    for (size_t i = 0; i < session_.GetOutputCount(); ++i) {
      outputs_.push_back(session_.GetOutputNameAllocated(i, allocator).get());
    }
  }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override {
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    for (const auto& x : inputs) {
      values.push_back(Ort::Value::CreateTensor<float>(memory, x.data_ptr<float>(), x.numel(), x.sizes().data(), x.dim()));
    }
    std::vector<const char*> in_names, out_names;
    for (const auto& n : inputs_) in_names.push_back(n.c_str());
    for (const auto& n : outputs_) out_names.push_back(n.c_str());
    auto results = session_.Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                                out_names.data(), out_names.size());
    std::vector<at::Tensor> outputs;
    for (auto& value : results) {
      Shape shape = value.GetTensorTypeAndShapeInfo().GetShape();
      outputs.push_back(at::from_blob(value.GetTensorMutableData<float>(), shape, at::kFloat).clone());
    }
    return outputs;
  }

 private:
  static Ort::Env& env() {
    static Ort::Env instance(ORT_LOGGING_LEVEL_WARNING, "remover_host");
    return instance;
  }
  Ort::Session session_;
  std::vector<std::string> inputs_, outputs_;
};
#endif

std::unique_ptr<Graph> open_graph(const std::string& bundle, const std::string& backend, const std::string& name) {
  if (backend == "aoti") return std::make_unique<AotiGraph>(bundle + "/aoti/" + name + ".pt2");
#ifdef REMOVER_WITH_TENSORRT
  if (backend == "tensorrt") return std::make_unique<TensorRTGraph>(bundle + "/tensorrt/" + name + ".plan");
#endif
#ifdef REMOVER_WITH_ONNXRUNTIME
  if (backend == "onnxruntime") return std::make_unique<OrtGraph>(bundle + "/onnx/" + name + ".onnx");
#endif
  throw std::runtime_error("backend " + backend + " is not built into this host (see the CMake configure output)");
}

// A raw float32 file as a tensor whose first unknown axis (-1) is derived from the file size.
at::Tensor read_raw(const std::string& path, Shape shape) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw std::runtime_error("cannot read " + path);
  const int64_t count = static_cast<int64_t>(file.tellg()) / static_cast<int64_t>(sizeof(float));
  int64_t known = 1;
  for (int64_t d : shape) known *= d > 0 ? d : 1;
  for (int64_t& d : shape) {
    if (d < 0) d = count / known;
  }
  at::Tensor tensor = at::empty(shape, at::kFloat);
  if (tensor.numel() != count) throw std::runtime_error(path + " does not hold a tensor of the bundle's shape");
  file.seekg(0);
  file.read(static_cast<char*>(tensor.data_ptr()), count * static_cast<int64_t>(sizeof(float)));
  return tensor;
}

void write_raw(const std::string& path, const at::Tensor& tensor) {
  at::Tensor host = tensor.to(at::kCPU).contiguous();
  const std::string temporary = path + ".tmp";
  std::ofstream file(temporary, std::ios::binary);
  file.write(static_cast<const char*>(host.data_ptr()), host.numel() * static_cast<int64_t>(sizeof(float)));
  file.close();
  if (!file || std::rename(temporary.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot write " + path);
}

// A streamed VAE pass: the first chunk alone, then `step`-sized chunks carrying the caches.
at::Tensor stream(Graph& first, Graph& next, const at::Tensor& x, int64_t step) {
  std::vector<at::Tensor> out = first.run({x.slice(2, 0, 1).contiguous()});
  std::vector<at::Tensor> chunks{out[0]};
  for (int64_t start = 1; start < x.size(2); start += step) {
    std::vector<at::Tensor> inputs{x.slice(2, start, start + step).contiguous()};
    inputs.insert(inputs.end(), out.begin() + 1, out.end());
    out = next.run(inputs);
    chunks.push_back(out[0]);
  }
  return at::cat(chunks, 2);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::map<std::string, std::string> options{{"--backend", "aoti"}, {"--device", "cpu"}};
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    if (options.count(args[i]) && i + 1 < args.size()) {
      options[args[i]] = args[i + 1];
      ++i;
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() != 3) {
    std::cerr << "usage: remover_host BUNDLE INPUT_DIR OUTPUT_DIR [--backend aoti|tensorrt|onnxruntime] "
                 "[--device cpu|cuda]\n";
    return 2;
  }
  const std::string &bundle = positional[0], &input_dir = positional[1], &output_dir = positional[2];
  const std::string& backend = options["--backend"];
  const at::Device device(backend == "tensorrt" ? "cuda" : options["--device"]);

  auto start = std::chrono::steady_clock::now();
  std::map<std::string, std::unique_ptr<Graph>> graphs;
  for (const char* name : {"vae_encode_first", "vae_encode_next", "dit_sampler", "vae_decode_first", "vae_decode_next"}) {
    graphs[name] = open_graph(bundle, backend, name);
  }
  const double load_s = seconds_since(start);

  Shape video_shape = graphs["vae_encode_first"]->input_shapes.at(0);  // [1, 3, 1, H, W]
  video_shape[0] = 2;  // the masked video and the mask video, encoded one after the other
  video_shape[2] = -1;
  const Shape noise_shape = graphs["dit_sampler"]->input_shapes.at(0);  // [1, z, T, h, w]
  at::Tensor video = read_raw(input_dir + "/video.f32", video_shape).to(device);
  at::Tensor noise = read_raw(input_dir + "/noise.f32", noise_shape).to(device);
  std::cerr << "bundle " << bundle << " (" << backend << " on " << device << "): video " << video.sizes()
            << ", noise " << noise.sizes() << "\n";

  torch::NoGradGuard no_grad;
  start = std::chrono::steady_clock::now();
  std::vector<at::Tensor> context;  // masked latents, mask latents
  for (int64_t i = 0; i < 2; ++i) {
    at::Tensor one = video.slice(0, i, i + 1).contiguous();
    context.push_back(stream(*graphs["vae_encode_first"], *graphs["vae_encode_next"], one, kNextChunkFrames));
  }
  const double encode_s = seconds_since(start);

  start = std::chrono::steady_clock::now();
  const int64_t z = noise.size(1);
  at::Tensor clean = graphs["dit_sampler"]->run({noise, context[0], context[1]})[0];
  const double denoise_s = seconds_since(start);
  if (clean.size(1) != z) throw std::runtime_error("the sampler returned latents of another shape");

  start = std::chrono::steady_clock::now();
  at::Tensor decoded = stream(*graphs["vae_decode_first"], *graphs["vae_decode_next"], clean, 1);
  const double decode_s = seconds_since(start);

  write_raw(output_dir + "/latents.f32", clean);
  write_raw(output_dir + "/video.f32", decoded);
  std::printf("wrote %s/video.f32 %s: load %.2f s, encode %.2f s, denoise %.2f s, decode %.2f s\n", output_dir.c_str(),
              (std::ostringstream() << decoded.sizes()).str().c_str(), load_s, encode_s, denoise_s, decode_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {  // c10::Error derives from std::exception
    std::string message = error.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << "\n";
    return 2;
  }
}
