"""tools/model_converters/export_classifier.py: the FixMatch digits teacher
exported as a standalone ImageClassifier predicts with mmpretrain's
ImageClassificationInferencer exactly what the teacher predicts; the
student, wrong sources, models without a teacher or a head, and the refusal
to overwrite the inputs."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmpretrain import ImageClassificationInferencer
from mmpretrain.registry import DATASETS, MODELS

TOOL = osp.join(REPO_ROOT, 'tools', 'model_converters',
                'export_classifier.py')
CONFIG = osp.join(
    REPO_ROOT, 'configs', 'fixmatch',
    'fixmatch_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py')
CLASSES = [str(i) for i in range(10)]


def load_tool():
    spec = importlib.util.spec_from_file_location('tool_export_classifier',
                                                  TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export = load_tool()


def build(cfg_model):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg_model)


@pytest.fixture(scope='module')
def fixmatch(tmp_path_factory):
    """The digits FixMatch of the demo, its teacher moved away from the
    student (TMA with momentum 0.5), saved as MMEngine saves checkpoints."""
    tmp = tmp_path_factory.mktemp('export')
    cfg = Config.fromfile(CONFIG)
    cfg.model.teacher = dict(
        type='SpatialTemporalSmoothing', preserve_prob=0.0, momentum=0.5)
    cfg_path = str(tmp / 'fixmatch_digits.py')
    cfg.dump(cfg_path)
    torch.manual_seed(0)
    model = build(dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
    model.init_weights()
    model.teacher.update_parameters(model.student)  # the first copy
    with torch.no_grad():
        for p in model.student.parameters():
            p.mul_(1 + 0.5 * torch.randn_like(p))
        for name, b in model.student.named_buffers():
            if name.endswith('running_mean'):
                b.add_(0.1)
    model.teacher.update_parameters(model.student)
    ckpt = str(tmp / 'iter_10.pth')
    torch.save(
        dict(
            state_dict=model.state_dict(),
            meta=dict(
                iter=10,
                epoch=0,
                seed=0,
                cfg=cfg.pretty_text,
                dataset_meta=dict(classes=tuple(CLASSES)))), ckpt)
    return dict(tmp=tmp, cfg=cfg, cfg_path=cfg_path, ckpt=ckpt, model=model)


def run_export(fixmatch, out, *options):
    export.main([fixmatch['cfg_path'], fixmatch['ckpt'], str(out), *options])
    return torch.load(str(out), weights_only=True)


def run_export_fails(fixmatch, out, *options, config=None, ckpt=None):
    with pytest.raises(SystemExit) as err:
        export.main([
            config or fixmatch['cfg_path'], ckpt or fixmatch['ckpt'],
            str(out), *options
        ])
    return str(err.value.code)


def digits_test_images(n):
    """The first ``n`` test digits as the data set gives them (8x8x3)."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(dict(type='Digits', split='test'))
    return [dataset.get_data_info(i)['img'] for i in range(n)]


@pytest.mark.parametrize('source', ['teacher', 'student'])
def test_inferencer_predicts_as_the_model(fixmatch, tmp_path, source):
    out = tmp_path / f'{source}.pth'
    exported = run_export(fixmatch, out, '--source', source)
    model = fixmatch['model'].eval()
    classifier = model.teacher.module if source == 'teacher' \
        else model.student
    prefix = 'teacher.module.' if source == 'teacher' else 'student.'
    # The classifier's keys, with the weights of the source.
    state = model.state_dict()
    assert exported['state_dict'].keys() == classifier.state_dict().keys()
    for key, value in exported['state_dict'].items():
        assert torch.equal(value, state[prefix + key]), key
    meta = exported['meta']
    config_file = str(tmp_path / f'{source}.py')
    with open(config_file) as f:
        assert f.read() == meta['cfg'] == meta['config']
    assert meta['source'] == source and meta['iter'] == 10
    assert meta['dataset_meta'] == dict(classes=CLASSES)
    if source == 'teacher':
        assert meta['teacher'] == 'teacher' and meta['teacher_steps'] == 2

    # The exported config builds a plain ImageClassifier that loads the
    # checkpoint strictly.
    exported_cfg = Config.fromfile(config_file)
    assert exported_cfg.model.type == 'ImageClassifier'
    assert exported_cfg.model.data_preprocessor.type == 'ClsDataPreprocessor'
    standalone = build(exported_cfg.model)
    standalone.load_state_dict(exported['state_dict'], strict=True)

    inferencer = ImageClassificationInferencer(
        model=config_file, pretrained=str(out), device='cpu')
    images = digits_test_images(4)
    results = inferencer(images, batch_size=2)
    # The model's own forward on the same images through the config's test
    # pipeline (upsample to 16 px) and data preprocessor.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(fixmatch['cfg'].test_dataloader.dataset)
        batch = [dataset[i] for i in range(4)]
    data = model.data_preprocessor(
        dict(
            inputs=[b['inputs'] for b in batch],
            data_samples=[b['data_samples'] for b in batch]), False)
    with torch.no_grad():
        expected = classifier(data['inputs']).softmax(dim=1)
    for result, scores in zip(results, expected):
        np.testing.assert_allclose(
            result['pred_scores'], scores.numpy(), rtol=1e-5, atol=1e-6)
        assert result['pred_label'] == int(scores.argmax())
        assert result['pred_class'] == CLASSES[int(scores.argmax())]
    other = model.student if source == 'teacher' else model.teacher.module
    with torch.no_grad():
        assert not torch.allclose(
            other(data['inputs']).softmax(dim=1), expected), (
                'teacher and student predict the same: the test could not '
                'tell them apart')


def test_init_cfg_prefix_loads_the_teacher_from_the_training_checkpoint(
        fixmatch, tmp_path):
    """What docs/getting_started.md says: ``init_cfg`` with ``prefix``
    loads the teacher of a training checkpoint at ``init_weights()``."""
    exported = run_export(fixmatch, tmp_path / 'teacher.pth')
    cfg = Config.fromfile(str(tmp_path / 'teacher.py'))
    cfg.model.init_cfg = dict(
        type='Pretrained',
        checkpoint=fixmatch['ckpt'],
        prefix='teacher.module.')
    classifier = build(cfg.model)
    classifier.init_weights()
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, exported['state_dict'][key]), key


def test_refuses_to_overwrite_its_inputs(fixmatch, tmp_path):
    with open(fixmatch['ckpt'], 'rb') as f:
        before = f.read()
    message = run_export_fails(fixmatch, fixmatch['ckpt'])
    assert 'training checkpoint' in message
    # Through another spelling of the same path.
    message = run_export_fails(
        fixmatch,
        osp.join(osp.dirname(fixmatch['ckpt']), '.', 'iter_10.pth'))
    assert 'training checkpoint' in message
    with open(fixmatch['ckpt'], 'rb') as f:
        assert f.read() == before
    # OUT.pth -> OUT.py would be the training config.
    message = run_export_fails(
        fixmatch, osp.splitext(fixmatch['cfg_path'])[0] + '.pth')
    assert 'training config' in message
    message = run_export_fails(
        fixmatch, tmp_path / 'x.pth', '--out-config', fixmatch['cfg_path'])
    assert 'training config' in message


def test_wrong_source_fails(fixmatch, tmp_path):
    with pytest.raises(SystemExit) as err:
        export.main([
            fixmatch['cfg_path'], fixmatch['ckpt'],
            str(tmp_path / 'x.pth'), '--source', 'target'
        ])
    assert err.value.code == 2  # argparse: invalid choice
    message = run_export_fails(fixmatch, tmp_path / 'x.pth', '--source',
                               'ema')
    assert 'no `ema_state_dict`' in message
    message = run_export_fails(fixmatch, tmp_path / 'x.pth', '--source',
                               'student', '--teacher', 'teacher')
    assert 'needs --source teacher' in message
    message = run_export_fails(fixmatch, tmp_path / 'x.pth', '--teacher',
                               'ema_model')
    assert "--teacher ema_model is not an averaged model" in message
    assert not (tmp_path / 'x.pth').exists()


def test_missing_teacher_fails(fixmatch, tmp_path):
    """A supervised classifier's checkpoint has no teacher: the error says
    so and points to --source student; --source student exports it."""
    cfg = Config.fromfile(str(fixmatch['cfg_path']))
    classifier_cfg = export.classifier_config(cfg)
    cfg.model = classifier_cfg.model
    cfg_path = str(tmp_path / 'supervised.py')
    cfg.dump(cfg_path)
    model = build(cfg.model)
    ckpt = str(tmp_path / 'supervised.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    message = run_export_fails(
        fixmatch, tmp_path / 'x.pth', config=cfg_path, ckpt=ckpt)
    assert 'no teacher' in message and '--source student' in message
    export.main([cfg_path, ckpt, str(tmp_path / 'y.pth'), '--source',
                 'student'])
    out = torch.load(str(tmp_path / 'y.pth'), weights_only=True)
    assert out['state_dict'].keys() == model.state_dict().keys()


def test_model_without_head_fails(fixmatch, tmp_path):
    cfg = Config.fromfile(str(fixmatch['cfg_path']))
    cfg.model.pop('head')
    cfg_path = str(tmp_path / 'headless.py')
    cfg.dump(cfg_path)
    message = run_export_fails(fixmatch, tmp_path / 'x.pth', config=cfg_path)
    assert 'no head' in message and 'extract_backbone.py' in message


def test_weights_that_do_not_fit_the_config_fail(fixmatch, tmp_path):
    cfg = Config.fromfile(str(fixmatch['cfg_path']))
    cfg.model.backbone.widen_factor = 2
    cfg.model.head.in_channels = 128
    cfg_path = str(tmp_path / 'wider.py')
    cfg.dump(cfg_path)
    message = run_export_fails(fixmatch, tmp_path / 'x.pth', config=cfg_path)
    assert 'do not load' in message or 'do not fit' in message


def test_runner_tests_the_exported_pair(fixmatch, tmp_path):
    """``tools/test.py teacher.py teacher.pth``: MMEngine's runner tests the
    exported pair, with the accuracy of the teacher itself."""
    from mmengine.runner import Runner
    run_export(fixmatch, tmp_path / 'teacher.pth')
    cfg = Config.fromfile(str(tmp_path / 'teacher.py'))
    cfg.work_dir = str(tmp_path / 'work_dir')
    cfg.load_from = str(tmp_path / 'teacher.pth')
    cfg.test_dataloader.dataset.indices = 40
    cfg.log_level = 'WARNING'
    metrics = Runner.from_cfg(cfg).test()

    model = fixmatch['model'].eval()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(
            dict(fixmatch['cfg'].test_dataloader.dataset, indices=40))
        batch = [dataset[i] for i in range(len(dataset))]
    data = model.data_preprocessor(
        dict(
            inputs=[b['inputs'] for b in batch],
            data_samples=[b['data_samples'] for b in batch]), False)
    with torch.no_grad():
        preds = model.teacher.module(data['inputs']).argmax(dim=1)
    labels = torch.cat([s.gt_label for s in data['data_samples']])
    expected = 100 * (preds == labels).float().mean().item()
    assert metrics['accuracy/top1'] == pytest.approx(expected)
