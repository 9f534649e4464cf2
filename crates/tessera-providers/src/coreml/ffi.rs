//! Thin macOS-only bindings to Core ML: compile an `.mlpackage`, load the
//! compiled `.mlmodelc` with a chosen set of compute units, run one
//! prediction on caller-owned buffers, and ask Core ML's compute plan which
//! device each ML Program operation would prefer.
//!
//! Nothing here decides anything: no graph conversion, no placement policy.
//! Errors are plain strings that carry the `NSError`'s
//! `localizedDescription` where Core ML supplies one.
#![cfg(target_os = "macos")]

use std::cell::RefCell;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::mpsc;

use block2::{RcBlock, StackBlock};
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2::{available, AnyThread};
use objc2_core_ml::{
    MLCPUComputeDevice, MLComputePlan, MLComputeUnits, MLDictionaryFeatureProvider, MLFeatureProvider, MLFeatureValue,
    MLGPUComputeDevice, MLModel, MLModelConfiguration, MLMultiArray, MLMultiArrayDataType, MLNeuralEngineComputeDevice,
};
use objc2_foundation::{NSArray, NSDictionary, NSError, NSInteger, NSNumber, NSString, NSURL};

/// Which compute units Core ML may use (`MLComputeUnits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeUnits {
    CpuOnly,
    CpuAndNeuralEngine,
    CpuAndGpu,
    All,
}

impl ComputeUnits {
    fn to_ml(self) -> MLComputeUnits {
        match self {
            ComputeUnits::CpuOnly => MLComputeUnits::CPUOnly,
            ComputeUnits::CpuAndNeuralEngine => MLComputeUnits::CPUAndNeuralEngine,
            ComputeUnits::CpuAndGpu => MLComputeUnits::CPUAndGPU,
            ComputeUnits::All => MLComputeUnits::All,
        }
    }
}

/// One input tensor's data, borrowed from the caller (row-major, dense).
#[derive(Clone, Copy, Debug)]
pub enum InputData<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

/// One prediction output: `(feature name, shape, values as f32)`.
pub type NamedOutput = (String, Vec<usize>, Vec<f32>);

fn ns_error(context: &str, err: &NSError) -> String {
    format!("{context}: {}", err.localizedDescription())
}

/// A file URL for `path`; `.mlpackage` and `.mlmodelc` are directories, an
/// `.mlmodel` is a plain file.
fn file_url(path: &Path) -> Result<Retained<NSURL>, String> {
    let url = if path.is_dir() { NSURL::from_directory_path(path) } else { NSURL::from_file_path(path) };
    url.ok_or_else(|| format!("cannot make a file URL from {}", path.display()))
}

fn ns_numbers(values: &[usize]) -> Retained<NSArray<NSNumber>> {
    let numbers: Vec<Retained<NSNumber>> = values.iter().map(|&v| NSNumber::new_usize(v)).collect();
    NSArray::from_retained_slice(&numbers)
}

/// Compiles an `.mlpackage` (or `.mlmodel`) into an `.mlmodelc` directory.
///
/// Core ML writes the result to a temporary location; the caller moves it
/// somewhere permanent if it wants to keep it.
pub fn compile_package(package: &Path) -> Result<PathBuf, String> {
    autoreleasepool(|_| {
        let url = file_url(package)?;
        // `compileModelAtURL:error:` is deprecated in favour of the
        // completion-handler variant, but it is still present in current
        // SDKs, works on every macOS version we target, and the provider's
        // compile step is synchronous anyway: bridging the async variant back
        // to a blocking call would only add machinery.
        #[allow(deprecated)]
        // SAFETY: `url` is a valid file NSURL that outlives the call; the
        // class method has no other preconditions and reports failure
        // through the returned `Result` (the `NSError**` out-parameter).
        let compiled = unsafe { MLModel::compileModelAtURL_error(&url) }
            .map_err(|e| ns_error(&format!("compiling {}", package.display()), &e))?;
        compiled.to_file_path().ok_or_else(|| "Core ML returned a compiled-model URL that is not a file path".into())
    })
}

/// A loaded Core ML model.
#[derive(Debug)]
pub struct CoreMlModel {
    model: Retained<MLModel>,
}

// SAFETY: `MLModel` is not a main-thread-only class, and Objective-C
// reference counting is atomic, so handing the (sole Rust) owner of the
// reference to another thread is sound. `Sync` is deliberately NOT
// implemented: concurrent predictions on one instance are left to the caller
// to serialise (e.g. behind a `Mutex`).
unsafe impl Send for CoreMlModel {}

impl CoreMlModel {
    /// Loads a compiled `.mlmodelc` restricted to `units`.
    pub fn load(compiled: &Path, units: ComputeUnits) -> Result<CoreMlModel, String> {
        autoreleasepool(|_| {
            let url = file_url(compiled)?;
            // SAFETY: `+new` on MLModelConfiguration returns a fresh, fully
            // initialised configuration object; no preconditions.
            let config = unsafe { MLModelConfiguration::new() };
            // SAFETY: `config` is a valid configuration we own exclusively;
            // `to_ml` only yields the documented MLComputeUnits values.
            unsafe { config.setComputeUnits(units.to_ml()) };
            // SAFETY: `url` and `config` are valid objects that outlive the
            // call; failure comes back through the `Result`.
            let model = unsafe { MLModel::modelWithContentsOfURL_configuration_error(&url, &config) }
                .map_err(|e| ns_error(&format!("loading {}", compiled.display()), &e))?;
            Ok(CoreMlModel { model })
        })
    }

    /// Runs one prediction. Each input is `(feature name, shape, data)` with
    /// `data` dense and row-major; it is wrapped, not copied. Returns every
    /// output feature of the model description as `(name, shape, values)`,
    /// with Float32, Float16 and Int32 outputs read back as f32.
    pub fn predict(&self, inputs: &[(&str, &[usize], InputData<'_>)]) -> Result<Vec<NamedOutput>, String> {
        autoreleasepool(|_| self.predict_in_pool(inputs))
    }

    fn predict_in_pool(&self, inputs: &[(&str, &[usize], InputData<'_>)]) -> Result<Vec<NamedOutput>, String> {
        let mut names: Vec<Retained<NSString>> = Vec::with_capacity(inputs.len());
        let mut values: Vec<Retained<MLFeatureValue>> = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let array = wrap_input(name, shape, *data)?;
            // SAFETY: `array` is a valid MLMultiArray; the class method just
            // wraps (retains) it in a feature value.
            values.push(unsafe { MLFeatureValue::featureValueWithMultiArray(&array) });
            names.push(NSString::from_str(name));
        }
        let keys: Vec<&NSString> = names.iter().map(|n| &**n).collect();
        let objects: Vec<&AnyObject> = values.iter().map(|v| v.as_ref()).collect();
        let dict = NSDictionary::<NSString, AnyObject>::from_slices(&keys, &objects);
        // SAFETY: `alloc` gives a fresh allocation consumed by the initialiser;
        // every value in `dict` is an MLFeatureValue, which is what
        // `initWithDictionary:error:` accepts; failure comes back as `Err`.
        let provider = unsafe {
            MLDictionaryFeatureProvider::initWithDictionary_error(MLDictionaryFeatureProvider::alloc(), &dict)
        }
        .map_err(|e| ns_error("building the input feature provider", &e))?;

        // SAFETY: `provider` is a valid feature provider whose multi-arrays
        // point at the caller's slices, which are borrowed for this whole
        // call; Core ML only reads input features. Failure comes back as `Err`.
        let output = unsafe { self.model.predictionFromFeatures_error(ProtocolObject::from_ref(&*provider)) }
            .map_err(|e| ns_error("Core ML prediction", &e))?;

        // SAFETY: plain property getters on a valid, loaded model.
        let output_names = unsafe { self.model.modelDescription().outputDescriptionsByName() }.to_vecs().0;
        let mut results = Vec::with_capacity(output_names.len());
        for name in output_names {
            // SAFETY: `output` is the valid provider Core ML just returned;
            // `name` is a valid NSString.
            let value = unsafe { output.featureValueForName(&name) }
                .ok_or_else(|| format!("Core ML produced no value for output {name}"))?;
            // SAFETY: property getter on a valid feature value; returns nil
            // (None) if the value is not a multi-array.
            let array =
                unsafe { value.multiArrayValue() }.ok_or_else(|| format!("output {name} is not an MLMultiArray"))?;
            let (shape, data) = read_multi_array(&array).map_err(|e| format!("reading output {name}: {e}"))?;
            results.push((name.to_string(), shape, data));
        }
        // Our references to the input multi-arrays drop here with `values`,
        // `dict` and `provider`, and anything Core ML autoreleased is drained
        // by the pool in `predict`, all before the caller's borrow ends.
        Ok(results)
    }
}

/// Wraps a caller buffer in an MLMultiArray without copying.
fn wrap_input(name: &str, shape: &[usize], data: InputData<'_>) -> Result<Retained<MLMultiArray>, String> {
    let (ptr, len, data_type) = match data {
        InputData::F32(s) => (NonNull::from(s).cast::<c_void>(), s.len(), MLMultiArrayDataType::Float32),
        InputData::I32(s) => (NonNull::from(s).cast::<c_void>(), s.len(), MLMultiArrayDataType::Int32),
    };
    let count: usize = shape.iter().product();
    if count != len {
        return Err(format!("input {name}: shape {shape:?} needs {count} elements, buffer has {len}"));
    }
    let mut strides = vec![0usize; shape.len()];
    let mut step = 1usize;
    for (stride, &dim) in strides.iter_mut().zip(shape).rev() {
        *stride = step;
        step *= dim;
    }
    // SAFETY: `ptr` points at exactly `count` elements of `data_type`
    // (checked above), laid out with the row-major element `strides` given,
    // so Core ML never addresses outside the buffer. The buffer outlives
    // every use of the array: the array is only used inside `predict`, while
    // the caller's slice is borrowed. No deallocator is passed, so Core ML
    // never frees memory it does not own. Core ML only reads prediction
    // inputs, so the const-to-mut pointer cast is never written through.
    unsafe {
        MLMultiArray::initWithDataPointer_shape_dataType_strides_deallocator_error(
            MLMultiArray::alloc(),
            ptr,
            &ns_numbers(shape),
            data_type,
            &ns_numbers(&strides),
            None,
        )
    }
    .map_err(|e| ns_error(&format!("wrapping input {name}"), &e))
}

/// Copies an MLMultiArray (Float32, Float16 or Int32; any strides) into a
/// dense row-major f32 vector.
fn read_multi_array(array: &MLMultiArray) -> Result<(Vec<usize>, Vec<f32>), String> {
    // SAFETY: plain property getters on a valid multi-array.
    let (shape, strides, data_type) = unsafe { (array.shape(), array.strides(), array.dataType()) };
    let shape: Vec<usize> = shape.to_vec().iter().map(|n| n.as_usize()).collect();
    let strides = strides
        .to_vec()
        .iter()
        .map(|n| usize::try_from(n.as_isize()))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| "negative MLMultiArray stride".to_string())?;
    let element = ElementType::from_ml(data_type)?;

    if !available!(macos = 12.3) {
        return Err("MLMultiArray getBytesWithHandler: needs macOS 12.3 or later".into());
    }
    let result: RefCell<Option<Result<Vec<f32>, String>>> = RefCell::new(None);
    let handler = StackBlock::new(|bytes: NonNull<c_void>, size: NSInteger| {
        let size = usize::try_from(size).unwrap_or(0);
        // SAFETY: Core ML documents that `bytes` points at the array's
        // storage, `size` bytes long, readable for the duration of this
        // handler; the slice does not escape the handler.
        let buffer = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u8>(), size) };
        *result.borrow_mut() = Some(gather(buffer, &shape, &strides, element));
    });
    // SAFETY: `array` is valid and `handler` is a well-formed block that
    // lives until this synchronous call returns; it is only called during it.
    unsafe { array.getBytesWithHandler(&handler) };
    let data = result.into_inner().ok_or_else(|| "getBytesWithHandler did not call its handler".to_string())??;
    Ok((shape, data))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ElementType {
    F32,
    F16,
    I32,
}

impl ElementType {
    fn from_ml(data_type: MLMultiArrayDataType) -> Result<ElementType, String> {
        match data_type {
            MLMultiArrayDataType::Float32 => Ok(ElementType::F32),
            MLMultiArrayDataType::Float16 => Ok(ElementType::F16),
            MLMultiArrayDataType::Int32 => Ok(ElementType::I32),
            other => Err(format!("unsupported MLMultiArray data type {:#x}", other.0)),
        }
    }

    fn size(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 => 2,
        }
    }
}

/// Reads the elements addressed by `shape` and element `strides` out of
/// `buffer`, in row-major order, as f32. Bounds-checked.
fn gather(buffer: &[u8], shape: &[usize], strides: &[usize], element: ElementType) -> Result<Vec<f32>, String> {
    if shape.len() != strides.len() {
        return Err(format!("shape {shape:?} and strides {strides:?} differ in rank"));
    }
    let count: usize = shape.iter().product();
    let size = element.size();
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let offset: usize = index.iter().zip(strides).map(|(i, s)| i * s).sum();
        let bytes = buffer
            .get(offset * size..(offset + 1) * size)
            .ok_or_else(|| format!("element {index:?} lies outside the {}-byte buffer", buffer.len()))?;
        out.push(match element {
            ElementType::F32 => f32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            ElementType::I32 => i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f32,
            ElementType::F16 => half::f16::from_bits(u16::from_ne_bytes([bytes[0], bytes[1]])).to_f32(),
        });
        for (i, &dim) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < dim {
                break;
            }
            *i = 0;
        }
    }
    Ok(out)
}

/// For each top-level operation of the ML Program's `main` function, returns
/// `(label, preferred device)` where the label is the operation's first
/// output name (its operator name if it has no outputs) and the device is
/// "ane", "gpu" or "cpu", as planned by `MLComputePlan` (macOS 14.4+) with
/// `MLComputeUnits::All`.
///
/// Operations for which Core ML reports no device usage (typically `const`
/// operations, which do not execute) are left out. Operations nested in
/// control-flow blocks are not visited.
pub fn neural_engine_ops(compiled: &Path) -> Result<Vec<(String, String)>, String> {
    if !available!(macos = 14.4) {
        return Err("MLComputePlan needs macOS 14.4 or later".into());
    }
    autoreleasepool(|_| {
        let url = file_url(compiled)?;
        // SAFETY: `+new` returns a fresh, fully initialised configuration.
        let config = unsafe { MLModelConfiguration::new() };
        // SAFETY: `config` is a valid configuration we own exclusively.
        unsafe { config.setComputeUnits(MLComputeUnits::All) };

        // The plan is inspected inside the completion handler (whichever
        // thread Core ML calls it on) and only the plain Rust result crosses
        // the channel: MLComputePlan is not `Send`.
        let (sender, receiver) = mpsc::channel::<Result<Vec<(String, String)>, String>>();
        let shown = compiled.display().to_string();
        let handler = RcBlock::new(move |plan: *mut MLComputePlan, error: *mut NSError| {
            // SAFETY: Core ML passes either null or a pointer to a valid
            // object for each argument, borrowed for the duration of the
            // handler call; the references do not escape the handler.
            let (plan, error) = unsafe { (plan.as_ref(), error.as_ref()) };
            let result = match (plan, error) {
                (Some(plan), _) => autoreleasepool(|_| plan_ops(plan)),
                (None, Some(error)) => Err(ns_error(&format!("loading the compute plan of {shown}"), error)),
                (None, None) => Err("MLComputePlan returned neither a plan nor an error".into()),
            };
            // The receiver waits below until a result arrives, so this cannot
            // fail; if it ever did, the receiver reports the lost result.
            let _ = sender.send(result);
        });
        // SAFETY: `url`, `config` and `handler` are valid for the call; the
        // handler is a heap block (retained by Core ML for as long as it needs
        // it) whose closure owns everything it captures, so it stays valid
        // whenever and on whichever thread Core ML calls it. The macOS 14.4
        // availability of MLComputePlan is checked above.
        unsafe { MLComputePlan::loadContentsOfURL_configuration_completionHandler(&url, &config, &handler) };
        receiver.recv().map_err(|_| "MLComputePlan dropped its completion handler without calling it".to_string())?
    })
}

/// Lists the `main` function's operations with their preferred device.
fn plan_ops(plan: &MLComputePlan) -> Result<Vec<(String, String)>, String> {
    // SAFETY: property getters on a valid compute plan and its structure.
    let program =
        unsafe { plan.modelStructure().program() }.ok_or_else(|| "the model is not an ML Program".to_string())?;
    // SAFETY: property getter on a valid program structure.
    let functions = unsafe { program.functions() };
    let main = functions
        .objectForKey(&NSString::from_str("main"))
        .ok_or_else(|| "the ML Program has no main function".to_string())?;
    // SAFETY: property getters on a valid function and its block.
    let operations = unsafe { main.block().operations() };

    let mut ops = Vec::with_capacity(operations.len());
    for op in operations.to_vec() {
        // SAFETY: `op` is an operation of this plan's own model structure,
        // as `computeDeviceUsageForMLProgramOperation:` requires.
        let Some(usage) = (unsafe { plan.computeDeviceUsageForMLProgramOperation(&op) }) else {
            continue;
        };
        // SAFETY: property getter on a valid device-usage object.
        let device = unsafe { usage.preferredComputeDevice() };
        let device: &AnyObject = AsRef::<AnyObject>::as_ref(&*device);
        let device = if device.downcast_ref::<MLNeuralEngineComputeDevice>().is_some() {
            "ane"
        } else if device.downcast_ref::<MLGPUComputeDevice>().is_some() {
            "gpu"
        } else if device.downcast_ref::<MLCPUComputeDevice>().is_some() {
            "cpu"
        } else {
            return Err(format!("unknown Core ML compute device class {}", device.class().name().to_string_lossy()));
        };
        // SAFETY: property getters on a valid operation.
        let label = match unsafe { op.outputs() }.to_vec().first() {
            // SAFETY: property getter on a valid named value type.
            Some(output) => unsafe { output.name() }.to_string(),
            // SAFETY: property getter on a valid operation.
            None => unsafe { op.operatorName() }.to_string(),
        };
        ops.push((label, device.to_string()));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_honours_strides_and_types() {
        // A 2x2 f32 view with a padded row stride of 3 elements.
        let data: [f32; 6] = [1.0, 2.0, -9.0, 3.0, 4.0, -9.0];
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let out = gather(&bytes, &[2, 2], &[3, 1], ElementType::F32).unwrap();
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0]);

        // Transposed i32 strides.
        let data: [i32; 4] = [1, 2, 3, 4];
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let out = gather(&bytes, &[2, 2], &[1, 2], ElementType::I32).unwrap();
        assert_eq!(out, vec![1.0, 3.0, 2.0, 4.0]);

        // f16.
        let bytes: Vec<u8> =
            [0.5f32, -2.0].iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_ne_bytes()).collect();
        let out = gather(&bytes, &[2], &[1], ElementType::F16).unwrap();
        assert_eq!(out, vec![0.5, -2.0]);

        // Out of bounds is an error, not a read past the buffer.
        assert!(gather(&bytes, &[3], &[1], ElementType::F16).is_err());
    }
}
